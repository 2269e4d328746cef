"""Messages on the host <-> worker channel: one orjson object per line.

Host -> worker (the child's stdin): ``{"t": "job", "id", "attempt", "class", "method",
"args", "kwargs"}`` and ``{"t": "skip", "id"}`` (take a queued job back).  Worker -> host
(a private dup of the child's original stdout; the job's own stdout and stderr go to a
capture file instead, so a ``print`` can never corrupt the channel):
``{"t": "progress", "id", "fraction", "message"}``, ``{"t": "skipped", "id", "skipped"}``
and ``{"t": "done", "id", "ok", "result" | "error", "retry", "delay", "fail", "output",
"strays"?, "crashed"?}`` (``strays``: how many processes the job left running, killed by the
worker; ``crashed``: the worker kills itself after this answer -- its job went over its
``memory_limit``).

The host treats anything else on the channel as a protocol violation by the job and ends the
attempt as ``crashed``: a job can be malicious, the host must not be.

The fork server (``process`` isolation on POSIX) has a channel of its own.  Host -> server:
``{"t": "fork", "n", "output", "file": [dev, ino], "job": {...as above}}`` (``output``: the
capture file the host created and keeps open; the child opens it only if it is still that
file) and ``{"t": "kill", "n", "force"}``,
where ``n`` is a key the host picks per attempt.  Server -> host: each line a forked child
wrote, verbatim behind its key (``b"<n> " + line``), decoded with :func:`decode` like any
worker's; and the server's own ``{"t": "started", "n", "pid"}``, ``{"t": "broken", "n",
"why"}`` and ``{"t": "exited", "n", "code", "why"?, "strays"?}`` (``strays``: processes of
the child's job the server killed, when it was killed or died).  The key comes from the
server, never from the child, so a job cannot answer for another.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from ..models import Claimed, ErrorInfo, JSONValue, Outcome, OutcomeKind

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


@dataclass(slots=True)  # not frozen: see models.HOT_RECORDS
class Done:
    job_id: int
    outcome: Outcome


def _job(job: Claimed) -> dict[str, object]:
    return {"t": "job", "id": job.id, "attempt": job.attempt, "class": job.cls,
            "method": job.method, "args": job.args, "kwargs": job.kwargs}


def encode_job(job: Claimed) -> bytes:
    return orjson.dumps(_job(job)) + b"\n"


def encode_fork(key: int, output: str, identity: tuple[int, int], job: Claimed) -> bytes:
    """Ask the fork server for a child running ``job``, its output captured in ``output``:
    the file the host created there, ``identity`` being its ``(st_dev, st_ino)``."""
    return orjson.dumps({"t": "fork", "n": key, "output": output, "file": list(identity),
                         "job": _job(job)}) + b"\n"


def encode_kill(key: int, *, force: bool) -> bytes:
    return orjson.dumps({"t": "kill", "n": key, "force": force}) + b"\n"


@dataclass(frozen=True, slots=True)
class Forwarded:
    """A line a forked child wrote, to be decoded (strictly) by its attempt."""

    key: int
    line: bytes


@dataclass(frozen=True, slots=True)
class Started:
    key: int
    pid: int


@dataclass(frozen=True, slots=True)
class Broken:
    """The server gave up on a child's pipe (a line over the limit) and killed it."""

    key: int
    why: str


@dataclass(frozen=True, slots=True)
class Exited:
    """The server reaped a child (``code`` as ``Popen.returncode``) or could not fork it."""

    key: int
    code: int | None
    why: str | None
    strays: int = 0


def decode_server(line: bytes) -> Forwarded | Started | Broken | Exited:
    """Parse one line from the fork server; :class:`ProtocolError` if it is not one."""
    if not line.startswith(b"{"):
        head, sep, rest = line.partition(b" ")
        if not sep or not head.isdigit():
            raise ProtocolError("a forwarded line without its key")
        return Forwarded(int(head), rest)
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(key := msg.get("n"), int):
        raise ProtocolError("fork server message without a key")
    kind = msg.get("t")
    if kind == "started" and isinstance(pid := msg.get("pid"), int):
        return Started(key, pid)
    if kind == "broken":
        return Broken(key, _str(msg, "why", "the worker broke the protocol"))
    if kind == "exited":
        code = msg.get("code")
        why = msg.get("why")
        return Exited(key, code if isinstance(code, int) else None,
                      why if isinstance(why, str) else None, _count(msg, "strays"))
    raise ProtocolError(f"unknown fork server message {kind!r}")


def _count(obj: dict[str, JSONValue], key: str) -> int:
    """A non-negative integer field, 0 if absent or not one."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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
    strays = _count(msg, "strays")
    if msg.get("ok") is True:
        return Done(msg["id"], Outcome(OutcomeKind.COMPLETED, result=msg.get("result"),
                                       exit_code=None, output=output, strays=strays))
    delay = msg.get("delay")
    return Done(msg["id"], Outcome(
        OutcomeKind.CRASHED if msg.get("crashed") is True else OutcomeKind.FAILED,
        error=_error(msg.get("error")),
        output=output,
        strays=strays,
        retry_requested=msg.get("retry") is True,
        retry_delay=float(delay) if isinstance(delay, int | float) and delay >= 0 else None,
        fail_now=msg.get("fail") is True,
    ))
