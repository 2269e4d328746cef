"""Load, scaled down for CI: 8 clients submit 2,000 no-op jobs (half one per request, half in
batches of 10) to a real serve with 2 pool workers, while the jobs run.  Every job must
complete, and the serve process's memory must stay bounded.  ``python stress/load.py`` is the
full 20,000-job run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stress"))

from load import load_test

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads RSS from /proc")

# The host starts near 40 MB; 2,000 jobs must not grow it by more than a small, fixed
# amount (it holds no per-job state once a job is recorded).
MAX_RSS_MB = 150.0
MAX_GROWTH_MB = 40.0


async def test_2000_jobs_from_8_clients_all_complete_in_bounded_memory(tmp_path: Path) -> None:
    report = await load_test(tmp_path, jobs=2000, clients=8, batch=10, workers=2,
                             max_rss_mb=MAX_RSS_MB, timeout=120)

    assert report.acknowledged == 2000, report.notes
    assert report.missing == 0
    assert report.not_completed == 0
    assert report.failed == 0, report.errors
    assert report.other_attempts == 0, report.errors
    assert report.completed == 2000
    assert report.integrity == "ok"
    assert report.rss_samples > 10, "the RSS sampler did not run"
    assert report.rss_peak_mb <= MAX_RSS_MB, report
    assert report.vm_hwm_mb <= MAX_RSS_MB, report
    assert report.rss_peak_mb - report.rss_start_mb <= MAX_GROWTH_MB, report
    assert report.ok
