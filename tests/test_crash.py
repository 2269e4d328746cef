"""The §4 guarantee under SIGKILL: a short run of stress/crash.py (run alone: -m crash)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from crash import crash_test

pytestmark = pytest.mark.crash


async def test_no_acknowledged_job_is_lost_across_sigkills(tmp_path: Path) -> None:
    report = await crash_test(tmp_path, kills=4, seed=7, min_up=0.2, max_up=0.5)

    assert report.kills == 4
    assert report.acknowledged > 50, "the submit stream should have got jobs in"
    assert report.missing == []
    assert report.not_final == []
    assert report.completed == report.acknowledged
    assert report.ran_twice_unexplained == [], "ran twice without the host dying mid-run"
    assert report.never_ran_but_completed == []
    assert report.integrity == "ok"
