"""Decisions both stores make the same way, as pure functions of what they read.

Each store reads the rows its own way (``sqlite3`` or asyncpg); what those rows lead to is
decided here once, so the two backends cannot drift apart (the contract suite checks the
outcome on both).
"""

from __future__ import annotations

from ..errors import WrongState
from ..models import Status


def retried_step_waits(job_id: int, position: tuple[int, int],
                       before: tuple[int, str] | None) -> bool:
    """Whether a chain step retried by hand waits for the step before it (True) or runs now
    with that step's result as ``previous`` (False); raise :class:`WrongState` if it may not
    be retried alone.

    ``position`` is ``(chain_id, pos)`` of a step after the first; ``before`` the id and status
    of the step before it, or None if that was pruned.  A step runs only after the one before
    it completed: pending or running, it waits; failed or cancelled, retry that one instead.
    """
    chain_id, pos = position
    if before is None:
        raise WrongState(f"job {job_id} is step {pos + 1} of chain {chain_id}, and step {pos} "
                         "was pruned: its result, this step's 'previous', is gone")
    before_id, status = before[0], Status(before[1])
    if status in (Status.PENDING, Status.RUNNING):
        return True
    if status is not Status.COMPLETED:
        raise WrongState(f"job {job_id} is step {pos + 1} of chain {chain_id}, and step {pos} "
                         f"(job {before_id}) ended {status.value}: retry job {before_id}, and "
                         "the chain goes on from there")
    return False
