"""Messages on the host <-> worker channel: one orjson object per line.

Host -> worker (the child's stdin): ``{"t": "job", "id", "attempt", "class", "method",
"args", "kwargs"}`` and ``{"t": "skip", "id"}`` (take a queued job back).  Worker -> host
(a private dup of the child's original stdout; the job's own stdout and stderr go to a
capture file instead, so a ``print`` can never corrupt the channel):
``{"t": "progress", "id", "fraction", "message"}``, ``{"t": "skipped", "id", "skipped"}``
and ``{"t": "done", "id", "ok", "result" | "error", "retry", "delay", "fail", "output"}``.

The host treats anything else on the channel as a protocol violation by the job and ends the
attempt as ``crashed``: a job can be malicious, the host must not be.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from .models import Claimed, ErrorInfo, JSONValue, Outcome, OutcomeKind

MAX_MESSAGE_TEXT = 2000


class ProtocolError(Exception):
    """The worker sent something that is not a valid message."""


@dataclass(frozen=True, slots=True)
class Progress:
    job_id: int
    fraction: float
    message: str | None


@dataclass(frozen=True, slots=True)
class Skipped:
    """The answer to a ``skip``: whether the job was taken back before it started."""

    job_id: int
    skipped: bool


@dataclass(frozen=True, slots=True)
class Done:
    job_id: int
    outcome: Outcome


def encode_job(job: Claimed) -> bytes:
    return orjson.dumps({"t": "job", "id": job.id, "attempt": job.attempt, "class": job.cls,
                         "method": job.method, "args": job.args, "kwargs": job.kwargs}) + b"\n"


def _str(obj: dict[str, JSONValue], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


def _error(obj: object) -> ErrorInfo:
    if not isinstance(obj, dict):
        raise ProtocolError("error is not an object")
    mro = obj.get("mro", [])
    if not isinstance(mro, list) or not all(isinstance(m, str) for m in mro):
        raise ProtocolError("error.mro is not a list of names")
    tb = obj.get("traceback")
    return ErrorInfo(type=_str(obj, "type", "Error")[:200],
                     message=_str(obj, "message")[:MAX_MESSAGE_TEXT],
                     traceback=tb if isinstance(tb, str) else None,
                     mro=tuple(mro[:64]))


def encode_skip(job_id: int) -> bytes:
    return orjson.dumps({"t": "skip", "id": job_id}) + b"\n"


def decode(line: bytes) -> Progress | Skipped | Done:
    """Parse one worker message; raise :class:`ProtocolError` on anything unexpected."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("id"), int):
        raise ProtocolError("message without a job id")
    kind = msg.get("t")
    if kind == "progress":
        fraction = msg.get("fraction")
        if not isinstance(fraction, int | float) or isinstance(fraction, bool):
            raise ProtocolError("progress without a numeric fraction")
        message = msg.get("message")
        return Progress(msg["id"], min(1.0, max(0.0, float(fraction))),
                        message[:500] if isinstance(message, str) else None)
    if kind == "skipped":
        return Skipped(msg["id"], msg.get("skipped") is True)
    if kind != "done":
        raise ProtocolError(f"unknown message type {kind!r}")
    output = _str(msg, "output")
    if msg.get("ok") is True:
        return Done(msg["id"], Outcome(OutcomeKind.COMPLETED, result=msg.get("result"),
                                       exit_code=None, output=output))
    delay = msg.get("delay")
    return Done(msg["id"], Outcome(
        OutcomeKind.FAILED,
        error=_error(msg.get("error")),
        output=output,
        retry_requested=msg.get("retry") is True,
        retry_delay=float(delay) if isinstance(delay, int | float) and delay >= 0 else None,
        fail_now=msg.get("fail") is True,
    ))
