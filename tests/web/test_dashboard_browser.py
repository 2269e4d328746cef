"""The dashboard (§8) in a real headless Chromium against a real ``asyncjobs serve``.

Run alone with ``pytest -m browser``.  Without /usr/bin/chromium these tests skip, except when
``CI=true``: there a missing browser fails, so CI cannot go green without running them.
Every wait is bounded: Playwright's default timeout is set to a few seconds per page.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_fixture import (
    CHROMIUM,
    Server,
    launch_chromium,
    signed_in_page,
    start_server,
)

pytestmark = pytest.mark.browser

WAIT_MS = 5000  # the longest any single expectation waits


def _browser_missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so a missing browser is a failure, not a skip")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _browser_missing(f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: PLC0415
    except ImportError:
        _browser_missing("playwright is not installed (pip install -e '.[test]')")
    playwright = sync_playwright().start()
    try:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


def _serve(directory: Path) -> Iterator[Server]:
    server = start_server(directory)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One host shared by the module's tests; each test makes and checks its own jobs."""
    yield from _serve(tmp_path_factory.mktemp("dashboard"))


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A host with no jobs yet, for the test that checks exact counts."""
    yield from _serve(tmp_path / "project")


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    with open_page(browser, server) as page:
        yield page


@contextlib.contextmanager
def open_page(browser: Any, server: Server, **size: int) -> Iterator[Any]:
    """A signed-in page; on leaving, it must not have raised errors or opened dialogs."""
    page = signed_in_page(browser, server, **size)
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: errors.append(f"unexpected dialog: {dialog.message}"))
    try:
        yield page
    finally:
        page.context.close()
    assert errors == [], "the page raised errors or opened dialogs"


def _expect() -> Any:
    from playwright.sync_api import expect  # noqa: PLC0415 - only once a browser exists

    expect.set_options(timeout=WAIT_MS)
    return expect


def _row(page: Any, job_id: int) -> Any:
    return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


def _mark_no_reload(page: Any) -> None:
    page.evaluate("window.__sameDocument = true")


def _assert_not_reloaded(page: Any) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"


# -- overview ------------------------------------------------------------------------------

def test_overview_cards_show_the_counts_and_update_live(browser: Any,
                                                        fresh_server: Server) -> None:
    s = fresh_server
    finished = [s.submit("SampleJob", "process", ["a"]) for _ in range(3)]
    finished += [s.submit("UserLoginService", "handle", [""]) for _ in range(2)]
    s.submit("SampleJob", "process", ["later"], delay=3600)
    doomed = s.submit("SampleJob", "process", ["never"], delay=3600)
    s.request("POST", f"/api/jobs/{doomed}/cancel")
    slow = s.submit("SlowJob", "run", [30, 30])
    for job_id in finished:
        assert s.wait(job_id)["status"] in ("completed", "failed")
    assert s.wait_for_status(slow, "running")["status"] == "running"

    with open_page(browser, s) as page:
        _check_cards_then_live_updates(page, s, slow)


def _check_cards_then_live_updates(page: Any, s: Server, slow: int) -> None:
    expect = _expect()

    def card(status: str) -> Any:
        return page.locator(f'.card[data-status="{status}"] [data-count]')

    expect(card("pending")).to_have_text("1")
    expect(card("running")).to_have_text("1")
    expect(card("completed")).to_have_text("3")
    expect(card("failed")).to_have_text("2")
    expect(card("cancelled")).to_have_text("1")
    expect(page.locator("#workers-running")).to_have_text("1")
    expect(page.locator("#workers-max")).to_have_text("4")
    expect(page.locator("#tp-hour")).to_have_text("5")  # 3 completed + 2 failed attempts
    expect(page.locator("#chart rect.bar-completed")).to_have_count(1)

    _mark_no_reload(page)
    s.wait(s.submit("UserLoginService", "handle", [""]))
    expect(card("failed")).to_have_text("3")
    s.request("POST", f"/api/jobs/{slow}/cancel")
    expect(card("running")).to_have_text("0")
    expect(card("cancelled")).to_have_text("2")
    _assert_not_reloaded(page)


def test_hosts_panel_lists_this_host_as_leader_and_follows_its_jobs(
        browser: Any, fresh_server: Server) -> None:
    expect = _expect()
    s = fresh_server
    [host] = s.request("GET", "/api/hosts")["hosts"]
    with open_page(browser, s) as page:
        rows = page.locator("#hosts-body tr")
        expect(rows).to_have_count(1)
        row = rows.first
        expect(page.locator("#hosts-count")).to_have_text("(1)")
        expect(row.locator('[data-col="host"] .host-id')).to_have_text(host["id"][:8])
        expect(row.locator('[data-col="host"]')).to_contain_text("this host")
        expect(row.locator('[data-col="address"]')).to_contain_text(s.url)
        expect(row.locator('[data-col="address"]')).to_contain_text(f"pid {host['pid']}")
        # The leader is said in words, not only shown by a colour or a star.
        expect(row.locator('[data-col="role"]')).to_have_text(re.compile(r"^\s*leader\s*$"))
        expect(row.locator('[data-col="state"]')).to_have_text("alive")
        expect(row.locator('[data-col="heartbeat"]')).to_have_text(
            re.compile(r"^(just now|\d s ago|1\d s ago)$"))
        expect(row.locator('[data-col="running"]')).to_have_text("0")

        _mark_no_reload(page)
        slow = s.submit("SlowJob", "run", [30, 30])
        expect(row.locator('[data-col="running"]')).to_have_text("1")
        s.request("POST", f"/api/jobs/{slow}/cancel")
        expect(row.locator('[data-col="running"]')).to_have_text("0")
        _assert_not_reloaded(page)


def test_a_submitted_job_appears_and_its_status_changes_live(page: Any, server: Server) -> None:
    expect = _expect()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    _mark_no_reload(page)

    job_id = server.submit("SlowJob", "run", [1.5, 5])
    row = _row(page, job_id)
    expect(row).to_have_attribute("data-status", "running")
    expect(row.locator('[data-col="job"]')).to_contain_text("SlowJob.run")
    expect(row.locator('[data-col="progress"]')).to_have_text(re.compile(r"[1-9]\d*%"))
    expect(row).to_have_attribute("data-status", "completed")
    expect(row.locator('[data-col="status"]')).to_have_text("completed")
    _assert_not_reloaded(page)


def test_the_page_reconnects_when_the_host_comes_back(page: Any, server: Server) -> None:
    expect = _expect()
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "live")
    _mark_no_reload(page)

    server.crash()
    expect(conn).to_have_attribute("data-state", "reconnecting")
    server.restart()

    expect(conn).to_have_attribute("data-state", "live")
    job_id = server.submit("SampleJob", "process", ["after restart"])
    expect(_row(page, job_id)).to_have_attribute("data-status", "completed")
    _assert_not_reloaded(page)


def test_cancel_button_stops_a_running_job(page: Any, server: Server) -> None:
    expect = _expect()
    job_id = server.submit("SlowJob", "run", [30, 30])
    row = _row(page, job_id)
    expect(row).to_have_attribute("data-status", "running")

    row.get_by_role("button", name=f"Cancel job {job_id}").click()

    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row.get_by_role("button", name=f"Retry job {job_id}")).to_be_visible()
    job = server.job(job_id)
    assert job["status"] == "cancelled"
    assert job["attempt_history"][-1]["outcome"] == "cancelled"


def test_retry_button_runs_a_failed_job_again(page: Any, server: Server) -> None:
    expect = _expect()
    job_id = server.submit("UserLoginService", "handle", [""])
    assert server.wait(job_id)["status"] == "failed"
    row = _row(page, job_id)
    expect(row).to_have_attribute("data-status", "failed")

    with page.expect_response(re.compile(rf"/api/jobs/{job_id}/retry$")) as answer:
        row.get_by_role("button", name=f"Retry job {job_id}").click()
    assert answer.value.status == 200
    assert answer.value.json()["status"] in ("pending", "running")

    job = server.wait(job_id)
    assert job["status"] == "failed"
    assert [a["outcome"] for a in job["attempt_history"]] == ["failed", "failed"]
    expect(row).to_have_attribute("data-status", "failed")


def test_api_errors_show_as_a_readable_message(page: Any, server: Server) -> None:
    """A 409 from the host appears in the message bar (not an alert box) and the row heals."""
    expect = _expect()
    # Without the event stream the row cannot learn that the job was cancelled elsewhere,
    # so clicking its Cancel button meets a real 409 from the host.
    # The stream's URL carries its one-use ticket (``/api/events?ticket=…``).
    page.route(re.compile(r"/api/events\?ticket="), lambda route: route.abort())
    page.reload()
    job_id = server.submit("SampleJob", "process", ["later"], delay=3600)
    page.locator("#search-id").fill(str(job_id))
    page.locator("#search-id").press("Enter")
    row = _row(page, job_id)
    expect(row).to_have_attribute("data-status", "pending")
    server.request("POST", f"/api/jobs/{job_id}/cancel")

    row.get_by_role("button", name=f"Cancel job {job_id}").click()

    notice = page.locator("#notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(f"Could not cancel job {job_id}")
    expect(notice).to_contain_text("409")
    expect(row).to_have_attribute("data-status", "cancelled")


def test_filters_and_id_search(page: Any, server: Server) -> None:
    expect = _expect()
    failed = server.submit("UserLoginService", "handle", [""])
    done = server.submit("SampleJob", "process", ["x"])
    server.wait(failed)
    server.wait(done)

    page.locator("#filter-status").select_option("failed")
    expect(page).to_have_url(re.compile(r"#/\?status=failed$"))
    expect(_row(page, failed)).to_be_visible()
    expect(_row(page, done)).to_have_count(0)
    statuses = page.locator("#jobs-body tr").evaluate_all(
        "rows => rows.map(r => r.dataset.status)")
    assert set(statuses) == {"failed"}

    page.locator("#clear-filters").click()
    page.locator("#search-id").fill(str(done))
    page.locator("#search-id").press("Enter")
    expect(page.locator("#jobs-body tr")).to_have_count(1)
    expect(_row(page, done)).to_have_attribute("data-status", "completed")


# -- job page and logs -----------------------------------------------------------------------

def test_job_page_shows_traceback_and_attempt_timeline(page: Any, server: Server) -> None:
    expect = _expect()
    job_id = server.submit("UserLoginService", "handle", [""])
    server.wait(job_id)
    server.request("POST", f"/api/jobs/{job_id}/retry")
    history = server.wait(job_id)["attempt_history"]
    assert len(history) == 2

    page.goto(f"{server.url}/#/jobs/{job_id}")

    view = page.locator("#view-job")
    expect(view.locator("h1")).to_contain_text(f"Job {job_id}")
    expect(view.locator("h1")).to_contain_text("UserLoginService.handle")
    expect(view.locator("#job-error .error-line")).to_have_text(
        "ValueError: user must not be empty")
    expect(view.locator("#job-error pre.traceback")).to_contain_text("Traceback (most recent")
    expect(view.locator("#job-error pre.traceback")).to_contain_text(
        'raise ValueError("user must not be empty")')
    expect(view.locator("#job-data")).to_contain_text('[""]')
    attempts = view.locator(".timeline > li")
    expect(attempts).to_have_count(2)
    for number in (1, 2):
        item = attempts.nth(number - 1)
        expect(item).to_have_attribute("data-outcome", "failed")
        expect(item.locator(".attempt-number")).to_have_text(f"#{number}")
        expect(item.locator(".attempt-error")).to_have_text("ValueError: user must not be empty")
        expect(item.locator(".attempt-duration")).to_have_text(re.compile(r"\d+(\.\d+)? m?s"))
        # Which host ran it, in the short form the hosts panel uses.
        host = history[number - 1]["host"]
        expect(item.locator(".attempt-host")).to_have_text(f"on {host[:8]}")
        expect(item.locator(".attempt-host .host-id")).to_have_attribute("title", f"host {host}")
    expect(view.get_by_role("button", name=f"Retry job {job_id}")).to_be_visible()


def test_job_page_shows_the_whole_chain(page: Any, server: Server) -> None:
    expect = _expect()
    # The third step cannot take the keyword argument `previous` every later step gets, so
    # it fails (one attempt: steps share the chain's max_attempts) and the chain ends there.
    first = server.submit("SampleJob", "process", ["one"], max_attempts=1, then=[
        {"class": "SampleJob", "method": "process", "args": ["two"]},
        {"class": "UserLogoutService", "method": "handle", "args": ["three"]},
        {"class": "SampleJob", "method": "process", "args": ["four"]}])
    assert server.wait(first + 2)["error"]["type"] == "ArgumentsError"  # (a TypeError)

    page.goto(f"{server.url}/#/jobs/{first + 1}")

    steps = page.locator("#job-chain .chain-step")
    expect(steps).to_have_count(4)
    expect(steps.nth(0)).to_contain_text("completed")
    expect(steps.nth(1)).to_contain_text("completed")
    expect(steps.nth(1).locator("strong")).to_have_text("SampleJob.process")  # this page
    expect(steps.nth(2)).to_contain_text("failed")
    expect(steps.nth(3)).to_contain_text("cancelled")
    steps.nth(3).get_by_role("link").click()
    expect(page.locator("#view-job h1")).to_contain_text(f"Job {first + 3}")


def test_job_page_progress_bar_moves_live(page: Any, server: Server) -> None:
    expect = _expect()
    job_id = server.submit("SlowJob", "run", [2.0, 10])
    page.goto(f"{server.url}/#/jobs/{job_id}")
    bar = page.locator("#job-progress [role=progressbar]")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d*$"))
    expect(page.locator("#job-progress")).to_contain_text(re.compile(r"step \d+ of 10"))
    expect(page.locator("#view-job .job-head .badge")).to_have_text("completed")
    expect(page.locator("#job-progress")).to_have_count(0)
    expect(page.locator("#job-data")).to_contain_text('"slept"')
    expect(page.locator(".timeline > li")).to_have_attribute("data-outcome", "completed")


def test_logs_view_tails_both_files(page: Any, server: Server) -> None:
    expect = _expect()
    job_id = server.submit("UserLoginService", "handle", [""])
    server.wait(job_id)
    page.goto(f"{server.url}/#/logs")
    log = page.locator("#log-text")
    expect(log).to_contain_text(f"job={job_id} class=UserLoginService")
    expect(log).to_contain_text("status=failed")
    page.get_by_role("link", name="jobs_errors.log").click()
    expect(log).to_contain_text("ValueError: user must not be empty")
    expect(log).to_contain_text("Traceback (most recent call last)")


def test_narrow_window_has_no_sideways_scroll(browser: Any, server: Server) -> None:
    expect = _expect()
    server.submit("SampleJob", "process", ["narrow"])
    with open_page(browser, server, width=400, height=800) as page:
        expect(page.locator("#jobs-body tr").first).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 400


# -- sign-in ---------------------------------------------------------------------------------

def test_a_browser_without_a_session_is_refused(browser: Any, server: Server) -> None:
    expect = _expect()
    server.submit("UserLoginService", "handle", ["secret-user"])
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(server.url + "/")
        page.wait_for_url(server.url + "/login")
        expect(page.locator("#signin-message")).to_have_text("You are not signed in.")
        assert "sign-in link" in page.content()
        assert "secret-user" not in page.content()
        api_status = page.evaluate("fetch('/api/jobs').then(r => r.status)")
        assert api_status == 401

        # A sign-in link works once.  The session is kept in this origin's sessionStorage
        # and sent as a header: no cookie, which would go to every port of this host.
        path = server.login_path()
        page.goto(server.url + path)
        page.wait_for_url(server.url + "/")
        expect(page.locator("#jobs-body tr").first).to_be_visible()
        assert context.cookies() == []
        assert page.evaluate("sessionStorage.getItem('asyncjobs.session')")
        other = browser.new_context()
        try:
            again = other.new_page()
            again.set_default_timeout(WAIT_MS)
            again.goto(server.url + path)
            expect(again.locator("#signin-message")).to_contain_text("already used")
        finally:
            other.close()
    finally:
        context.close()


def test_the_dashboard_works_under_its_content_security_policy(page: Any,
                                                               server: Server) -> None:
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text else None)
    shown = _watch_a_pending_job_run(page, server)
    assert ("running", True) in shown  # the progress bar, whose width is set through CSSOM
    assert violations == []


def test_a_pending_job_page_goes_running_with_its_progress_bar_then_completed(
        page: Any, server: Server) -> None:
    shown = _watch_a_pending_job_run(page, server)
    running = shown.index(("running", True))
    assert shown[running + 1:] == [("completed", False)], shown


# Every state the job page rendered, in order: (status badge, progress bar shown).  A
# MutationObserver records each render as it happens, so a state that lasts a few hundred
# milliseconds is seen however the test's own polling is timed.
_RECORD_JOB_PAGE = """() => {
  const view = document.querySelector("#view-job");
  window.__jobPage = [];
  const record = () => {
    const badge = view.querySelector(".job-head .badge");
    const row = [badge ? badge.textContent : null,
                 !view.hidden && view.querySelector("#job-progress [role=progressbar]") !== null];
    const last = window.__jobPage[window.__jobPage.length - 1];
    if (!last || last[0] !== row[0] || last[1] !== row[1]) window.__jobPage.push(row);
  };
  record();
  new MutationObserver(record).observe(view, {childList: true, subtree: true, attributes: true});
}"""


def _watch_a_pending_job_run(page: Any, server: Server) -> list[tuple[str, bool]]:
    """Open the page of a job that stays pending (due in an hour), start watching it, make
    it due now (cancel, retry) and let it run 0.6 s: the states the page showed, in order."""
    expect = _expect()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    job_id = server.submit("SlowJob", "run", [], kwargs={"seconds": 0.6, "steps": 3},
                           delay=3600)
    page.goto(f"{server.url}/#/jobs/{job_id}")
    badge = page.locator("#view-job .job-head .badge")
    expect(badge).to_have_text("pending")
    page.evaluate(_RECORD_JOB_PAGE)
    server.request("POST", f"/api/jobs/{job_id}/cancel")
    expect(badge).to_have_text("cancelled")
    page.evaluate("window.__jobPage = []")
    assert server.request("POST", f"/api/jobs/{job_id}/retry")["status"] == "pending"
    assert server.wait(job_id)["status"] == "completed"
    expect(badge).to_have_text("completed")
    expect(page.locator("#job-data")).to_contain_text('"slept"')
    return [(status, bar) for status, bar in page.evaluate("window.__jobPage")]
