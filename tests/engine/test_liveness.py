"""The host's heartbeat, and the leader's rescue of attempts whose host's lease ran out."""

from __future__ import annotations

from fakes import FakeClock, HostFactory

from asyncjobs.config import HostSettings, Settings
from asyncjobs.engine.liveness import Liveness
from asyncjobs.engine.roles import SoleLeader
from asyncjobs.models import OutcomeKind, Status
from asyncjobs.store import HostRow


class Follower:
    """A leader role that some other host holds."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @property
    def is_leader(self) -> bool:
        return False


async def test_the_heartbeat_extends_the_lease_and_the_leader_rescues(
        settings: Settings, make_host: HostFactory, clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
        await host.store.register_host(HostRow(
            id="dead", url="", pid=1, hostname="elsewhere", started_at=clock.now(),
            heartbeat_at=clock.now(), expires_at=clock.now() + 15))
        await host.store.dispatch_round(host="dead", progress={}, finished=[],
                                        now=clock.now(), limit=1, concurrency={})
        clock.advance(20)  # "dead" stopped beating
        lease = HostSettings(heartbeat=5, lease=15)

        follower = Liveness(store=host.store, host_id=host.id, settings=lease, clock=clock,
                            leader=Follower(), rescue=host.dispatcher.recover)
        await follower.beat()
        beat = {h.id: h for h in await host.store.hosts(clock.now())}[host.id]
        assert (beat.heartbeat_at, beat.expires_at) == (clock.now(), clock.now() + 15)
        assert (await host.get(job_id)).status is Status.RUNNING, "only the leader rescues"

        leader = Liveness(store=host.store, host_id=host.id, settings=lease, clock=clock,
                          leader=SoleLeader(), rescue=host.dispatcher.recover)
        await leader.beat()
        job = await host.get(job_id)

    assert job.status is Status.PENDING
    assert [(a.host, a.outcome) for a in job.attempt_history] == [
        ("dead", OutcomeKind.INTERRUPTED)]
