"""Live backup of the SQLite store (§7 ``backup PATH``, ``POST /api/backup``).

A copy taken while the host writes must be a consistent database, and a host started on it
must come up cleanly: attempts that were running in it are ``interrupted`` and their jobs run
again, as after a crash.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import config_doc, write_config

from asyncjobs.client.cli import main
from asyncjobs.errors import InvalidField, WrongState
from asyncjobs.models import JobSpec, Priority
from asyncjobs.store.backup import check_target
from asyncjobs.store.sqlite import SqliteStore
from asyncjobs.testing import ServeProcess


def spec(n: int) -> JobSpec:
    return JobSpec(cls="Ok", method="run", args=[n], kwargs={}, priority=Priority.MEDIUM,
                   run_at=0.0, timeout=10.0, max_attempts=3)


def count_jobs(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


async def test_a_backup_taken_while_jobs_are_submitted_is_a_consistent_copy(
        tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "live.db")
    await store.open()
    stop = asyncio.Event()
    submitted = 0

    async def intake() -> None:
        nonlocal submitted
        while not stop.is_set():
            await store.submit([spec(submitted)], 0.0)
            submitted += 1

    try:
        await store.submit([spec(-i) for i in range(2000)], 0.0)  # a few hundred pages
        writer = asyncio.create_task(intake())
        async with asyncio.timeout(20):
            while submitted < 20:
                await asyncio.sleep(0.001)
            info = await store.backup(tmp_path / "copy.db")
            during = submitted
            while submitted < during + 20:  # intake went on after the copy, too
                await asyncio.sleep(0.001)
        stop.set()
        await writer
    finally:
        await store.close()

    copied = count_jobs(tmp_path / "copy.db")
    assert 2000 + 20 <= copied <= 2000 + during  # a snapshot from within the backup
    assert info.pages > 10 and info.bytes == (tmp_path / "copy.db").stat().st_size
    assert count_jobs(tmp_path / "live.db") == 2000 + submitted


def test_a_backup_target_must_be_a_new_absolute_path_in_an_existing_directory(
        tmp_path: Path) -> None:
    (tmp_path / "there.db").write_bytes(b"keep me")

    with pytest.raises(InvalidField, match="absolute"):
        check_target(Path("relative.db"))
    with pytest.raises(WrongState, match="never overwrites"):
        check_target(tmp_path / "there.db")
    with pytest.raises(InvalidField, match="does not exist"):
        check_target(tmp_path / "missing" / "copy.db")
    assert (tmp_path / "there.db").read_bytes() == b"keep me"


async def test_a_backup_taken_during_a_drain_restores_and_serves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        ) -> None:
    config = write_config(tmp_path / "live", config_doc(workers={"max": 2}))
    copy = tmp_path / "copy.db"
    with ServeProcess(config) as serve:
        async with serve.client() as client:
            ids = [await client.submit("Sleepy", "run", [0.2]) for _ in range(12)]
            async with asyncio.timeout(20):
                while (await client.get(ids[1]))["status"] != "running":
                    await asyncio.sleep(0.02)
        monkeypatch.setenv("ASYNCJOBS_URL", serve.url)
        monkeypatch.setenv("ASYNCJOBS_TOKEN", serve.token)
        assert await asyncio.to_thread(main, ["backup", str(copy)]) == 0
        assert await asyncio.to_thread(main, ["backup", str(copy)]) == 2  # never overwrites
        async with serve.client() as client:
            async with asyncio.timeout(30):
                for job_id in ids:
                    assert (await client.wait(job_id))["status"] == "completed"
    assert f"backed up the store to {copy}" in capsys.readouterr().out
    assert copy.read_bytes().startswith(b"SQLite format 3\0")
    assert not list(serve.data_dir.glob("backup-*"))  # the host's staged copy is gone
    with sqlite3.connect(copy) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM jobs").fetchall())
    running = [i for i, status in statuses.items() if status == "running"]
    assert running and len(statuses) == 12  # the copy holds the drain in mid-flight

    restored = tmp_path / "restored"
    write_config(restored, config_doc(workers={"max": 2}))
    (restored / "data").mkdir(mode=0o700)
    shutil.copy(copy, restored / "data" / "asyncjobs.db")
    with ServeProcess(restored / "config.json") as again:
        async with again.client() as client:
            async with asyncio.timeout(30):
                jobs = [await client.wait(i) for i in ids]
    assert all(job["status"] == "completed" for job in jobs)
    for job in jobs:
        outcomes = [a["outcome"] for a in job["attempt_history"]]
        if job["id"] in running:  # running at the copy: interrupted, then run again
            assert outcomes == ["interrupted", "completed"], job
        else:
            assert outcomes[-1] == "completed"
