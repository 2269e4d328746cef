"""The host's heartbeat, and the leader's rescue of attempts whose host's lease ran out."""

from __future__ import annotations

from fakes import FakeClock, HostFactory
from store_support import claim_as

from asyncjobs.config import HostSettings, Settings
from asyncjobs.engine.liveness import Liveness
from asyncjobs.engine.roles import FixedLeader
from asyncjobs.models import OutcomeKind, Status


async def test_the_heartbeat_extends_the_lease_and_the_leader_rescues(
        settings: Settings, make_host: HostFactory, clock: FakeClock) -> None:
    async with make_host(settings) as host:
        job_id = (await host.submit("Ok", "run")).id
        await claim_as(host.store, "dead", clock.now())
        clock.advance(20)  # "dead" stopped beating
        lease = HostSettings(heartbeat=5, lease=15)

        follower = Liveness(store=host.store, host_id=host.id, settings=lease, clock=clock,
                            leader=FixedLeader(leading=False), rescue=host.dispatcher.recover)
        await follower.beat()
        beat = {h.id: h for h in await host.store.hosts(clock.now())}[host.id]
        assert (beat.heartbeat_at, beat.expires_at) == (clock.now(), clock.now() + 15)
        assert (await host.get(job_id)).status is Status.RUNNING, "only the leader rescues"

        leader = Liveness(store=host.store, host_id=host.id, settings=lease, clock=clock,
                          leader=FixedLeader(), rescue=host.dispatcher.recover)
        await leader.beat()
        job = await host.get(job_id)

    assert job.status is Status.PENDING
    assert [(a.host, a.outcome) for a in job.attempt_history] == [
        ("dead", OutcomeKind.INTERRUPTED)]
