"""Progress and unique jobs, end to end through the host (and the API for progress)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fakes import Drain, HostFactory, SettingsFactory

from asyncjobs.config import Settings
from asyncjobs.engine.host import Host
from asyncjobs.web.api import build_app

FEATURE_JOBS = '''
import os
import time

import asyncjobs


class Progressive:
    def until(self, release: str) -> str:
        asyncjobs.progress(0.25, "a quarter")
        while not os.path.exists(release):
            time.sleep(0.01)
        return "released"

    def flood(self, n: int) -> int:
        for i in range(n):
            asyncjobs.progress(i / n, f"step {i}")
        return n
'''


FeatureSettings = Callable[..., Settings]


@pytest.fixture
def feature_settings(make_settings: SettingsFactory, tmp_path: Path) -> FeatureSettings:
    def make(isolation: str = "pool") -> Settings:
        (tmp_path / "featurejobs.py").write_text(FEATURE_JOBS)
        jobs = {"Progressive": {"module": "featurejobs", "methods": ["until", "flood"]},
                "Ok": {"module": "jobs_fixture.testjobs", "methods": ["run"]}}
        return make_settings(jobs=jobs, workers={"isolation": isolation})
    return make


@pytest.mark.parametrize("isolation", ["pool", "process"])
async def test_progress_of_a_running_job_is_visible_through_the_api(
        feature_settings: FeatureSettings, tmp_path: Path, isolation: str) -> None:
    release = tmp_path / f"release-{isolation}"
    async with Host(feature_settings(isolation)) as host:
        client = TestClient(TestServer(build_app(host)))
        await client.start_server()
        try:
            headers = {"Authorization": f"Bearer {host.token}"}
            resp = await client.post("/api/jobs", headers=headers, json={
                "class": "Progressive", "method": "until", "args": [str(release)]})
            job_id = (await resp.json())["id"]
            async with asyncio.timeout(10):
                while True:
                    job = await (await client.get(f"/api/jobs/{job_id}", headers=headers)).json()
                    if job["progress"] is not None:
                        break
                    await asyncio.sleep(0.02)
            assert job["status"] == "running"
            assert job["progress"] == {"fraction": 0.25, "message": "a quarter"}
            release.touch()
            resp = await client.get(f"/api/jobs/{job_id}/wait?timeout=10", headers=headers)
            assert (await resp.json())["status"] == "completed"
        finally:
            await client.close()


async def test_a_progress_flood_is_rate_limited(feature_settings: FeatureSettings) -> None:
    n = 100_000
    async with Host(feature_settings()) as host:
        with host.events.subscribe() as events:
            submitted = await host.submit("Progressive", "flood", [n])
            job = await host.wait(submitted.id, 30)
            progress_events = 0
            while not events.empty():
                progress_events += events.get_nowait().get("type") == "progress"
        assert job.status.value == "completed"
        assert job.result == n
        # The worker forwards at most ~10 updates a second plus the last one: the host never
        # sees, publishes or stores anything like n updates.
        assert progress_events < 100
        assert job.progress is not None and job.progress[0] == pytest.approx((n - 1) / n)
    # Closed cleanly, so the WAL is checkpointed into the database file.
    assert os.path.getsize(host.data_dir / "asyncjobs.db") < 1_000_000


async def test_concurrent_submits_with_one_unique_key_make_one_job(
        feature_settings: FeatureSettings, make_host: HostFactory, drain: Drain) -> None:
    async with make_host(feature_settings()) as host:
        results = await asyncio.gather(*(
            host.submit("Ok", "run", [i], unique_key="report-2026-11") for i in range(50)))
        ids = {r.id for r in results}
        assert len(ids) == 1
        assert sum(not r.duplicate for r in results) == 1
        assert len((await host.list_jobs()).jobs) == 1
        await drain(host)
        # Once the first is finished the key is free again.
        again = await host.submit("Ok", "run", unique_key="report-2026-11")
        assert not again.duplicate and again.id not in ids
