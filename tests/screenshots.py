"""Take the dashboard screenshots in docs/ from a real host with a realistic mix of jobs.

    python tests/screenshots.py [--minutes 3] [--out docs]

Starts ``asyncjobs serve`` on a copy of the shipped project, feeds it a varying stream of the
example jobs for a few minutes (so the throughput chart has some history), leaves some jobs
running, pending, failed and cancelled, and saves at 1280x800:

- ``dashboard-overview.png``: the overview with cards, chart and jobs table;
- ``dashboard-job.png``: the page of a job that failed after three attempts.

Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_fixture import REPO, Server, launch_chromium, signed_in_page, start_server

TITLES = ["Intro to asyncio", "Type hints in practice", "SQLite internals", "Testing with pytest",
          "Packaging 101", "Profiling Python"]
USERS = ["alice", "bob", "chen", "dara", "emeka", "farah", "goran"]


def one_random_job(server: Server, rng: random.Random, n: int) -> None:
    roll = rng.random()
    if roll < 0.25:
        server.submit(rng.choice(["LessonCreatedService", "LessonStartedService",
                                  "LessonEndedService"]), "handle", [rng.choice(TITLES)])
    elif roll < 0.45:
        server.submit("UserLoginService", "handle", [rng.choice(USERS)])
    elif roll < 0.52:
        server.submit("UserLoginService", "handle", [""])  # ValueError: fails, no retry
    elif roll < 0.62:
        server.submit("UserLogoutService", "handle", [rng.choice(USERS)])
    elif roll < 0.75:
        server.submit("SampleJob", "process", rng.sample(["a", "b", "c", "d"], 2))
    elif roll < 0.83:
        server.submit("FlakyJob", "run", [f"shot-{n}", 1])  # fails once, then completes
    elif roll < 0.97:
        server.submit("SlowJob", "run", [round(rng.uniform(1, 4), 1), 8])
    else:
        server.submit(rng.choice(["StuckJob", "CrashingJob"]), "run", [])


def feed(server: Server, seconds: float, rng: random.Random) -> None:
    """A stream whose rate rises and falls, so the chart has shape."""
    start = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - start) < seconds:
        rate = 1.5 + 1.3 * math.sin(elapsed / 40)  # jobs per second, 0.2 .. 2.8
        for _ in range(max(0, round(rng.gauss(rate, 0.6)))):
            one_random_job(server, rng, n)
            n += 1
        time.sleep(1)


def leave_a_mix(server: Server) -> int:
    """Running, pending, cancelled and failed jobs at the moment of the screenshot."""
    showcase = server.submit("FlakyJob", "run", ["shot-showcase", 9], max_attempts=3)
    deadline = time.monotonic() + 40
    while server.job(showcase)["status"] != "failed" and time.monotonic() < deadline:
        time.sleep(0.5)
    for title in TITLES[:3]:
        server.submit("LessonStartedService", "handle", [title], delay=900)
    server.submit("SampleJob", "process", ["report", "2026-11"], priority="low", delay=3600,
                  then=[{"class": "SampleJob", "method": "process", "args": ["mail"]}])
    cancelled = server.submit("UserLogoutService", "handle", ["hal"], delay=600)
    server.request("POST", f"/api/jobs/{cancelled}/cancel")
    server.wait(server.submit("UserLoginService", "handle", [""]))
    server.wait(server.submit("LessonCreatedService", "handle", ["Async patterns"],
                              priority="high"))
    # Newest first in the table: the running job on top, with some progress made.
    server.submit("SlowJob", "run", [30, 30])
    time.sleep(8)
    return showcase


def shoot(server: Server, out: Path, showcase: int) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = signed_in_page(browser, server)
        page.wait_for_selector("#jobs-body tr[data-job-id]")
        page.wait_for_timeout(1500)  # let the live progress bars move
        page.screenshot(path=str(out / "dashboard-overview.png"))
        page.goto(f"{server.url}/#/jobs/{showcase}")
        page.wait_for_selector(".timeline > li")
        page.evaluate("document.querySelector('.timeline details')?.removeAttribute('open')")
        page.wait_for_timeout(300)
        page.screenshot(path=str(out / "dashboard-job.png"))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="asyncjobs-shots-") as tmp:
        server = start_server(Path(tmp))
        try:
            feed(server, args.minutes * 60, rng)
            showcase = leave_a_mix(server)
            shoot(server, args.out, showcase)
        except BaseException:
            print(f"--- the host's log ({server.log_path}):", file=sys.stderr)
            print(server.log_path.read_text()[-5000:], file=sys.stderr)
            raise
        finally:
            server.stop()
    print(f"wrote {args.out / 'dashboard-overview.png'} and {args.out / 'dashboard-job.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
