/* asyncjobs sign-in: trade the one-time code of a sign-in link for a dashboard session.
 *
 * The session token is kept in sessionStorage, which belongs to this origin alone (scheme,
 * host and port) and to this tab: no other service on another port of this host can read
 * it, as it could a cookie.  The code leaves the address bar and history at once.
 */
"use strict";

(async function () {
  const message = document.getElementById("signin-message");
  const code = new URLSearchParams(location.search).get("code");
  history.replaceState(null, "", "/login");
  if (!code) {
    message.textContent = "You are not signed in.";
    return;
  }
  try {
    const response = await fetch("/api/sessions", {method: "POST", credentials: "omit",
      cache: "no-store", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({code})});
    const body = await response.json().catch(() => null);
    if (response.status === 201 && body && body.session) {
      sessionStorage.setItem("asyncjobs.session", body.session);
      location.replace("/");
      return;
    }
    message.textContent = "That sign-in link has expired or was already used.";
  } catch (err) {
    message.textContent = "The host is not reachable. Is `asyncjobs serve` still running?";
  }
})();
