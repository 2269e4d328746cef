"""Dashboard sign-in: one-time links, short-lived sessions and event-stream tickets.

A browser never holds the API token and never gets a cookie (a cookie for 127.0.0.1 goes
to *every* port of that host, so any other local listener could replay it).  Instead:

1. ``asyncjobs dashboard`` asks for a one-time sign-in code (valid two minutes);
2. the sign-in page's script exchanges it (``POST /api/sessions``) for a session token that
   it keeps in ``sessionStorage``, which is scoped to the origin: scheme, host *and* port;
3. the dashboard sends it as ``Authorization: Bearer <session>`` on every request;
4. ``EventSource`` cannot send headers, so the event stream is opened with a ticket in the
   query string: single-use, valid for a few seconds, good for ``/api/events`` only.

Sessions live in this process's memory, keyed by a hash of their token: they expire after
``session_ttl``, ``POST /api/sessions/revoke`` ends them all without touching the API token,
and a host restart ends them too (the operator signs in again with a new link).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

LOGIN_CODE_TTL = 120.0
TICKET_TTL = 30.0
MAX_ENTRIES = 10_000  # per table: a flood of sign-ins cannot grow the host's memory forever


def _key(secret: str) -> str:
    # Stored and looked up by hash: the table never holds a usable credential, and a dict
    # lookup on a hash leaks nothing useful through timing.
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


class _Table:
    """Secrets with an expiry time; ``take`` makes one single-use."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def issue(self) -> str:
        now = self._clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        if len(self._expiry) >= MAX_ENTRIES:
            del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
        secret = secrets.token_urlsafe(32)
        self._expiry[_key(secret)] = now + self.ttl
        return secret

    def valid(self, secret: str | None) -> bool:
        if not secret or not secret.isascii():
            return False
        expiry = self._expiry.get(_key(secret))
        return expiry is not None and expiry > self._clock()

    def take(self, secret: str | None) -> bool:
        ok = self.valid(secret)
        if ok and secret:
            del self._expiry[_key(secret)]
        return ok

    def clear(self) -> int:
        count = len(self._expiry)
        self._expiry.clear()
        return count


class Sessions:
    """The three tables of dashboard sign-in, with an injectable monotonic clock."""

    def __init__(self, session_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.codes = _Table(LOGIN_CODE_TTL, clock)
        self.sessions = _Table(session_ttl, clock)
        self.tickets = _Table(TICKET_TTL, clock)

    def login_code(self) -> str:
        return self.codes.issue()

    def exchange(self, code: str | None) -> str | None:
        """A new session token for an unused, unexpired sign-in code; else None."""
        return self.sessions.issue() if self.codes.take(code) else None

    def is_session(self, token: str | None) -> bool:
        return self.sessions.valid(token)

    def ticket(self) -> str:
        return self.tickets.issue()

    def use_ticket(self, ticket: str | None) -> bool:
        return self.tickets.take(ticket)

    def revoke_all(self) -> int:
        """End every session (and the tickets they drew); how many sessions there were."""
        self.tickets.clear()
        return self.sessions.clear()
