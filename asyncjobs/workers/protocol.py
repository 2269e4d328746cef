"""Every message of the worker channels, as typed records: encode and decode, both ways.

Host -> worker (the child's stdin): :class:`JobRequest` ``{"t": "job", "id", "attempt",
"class", "method", "args", "kwargs"}`` and :class:`SkipRequest` ``{"t": "skip", "id"}``
(take a queued job back).  Worker -> host (a private dup of the child's original stdout; the
job's own stdout and stderr go to a capture file instead, so a ``print`` can never corrupt
the channel): ``{"t": "started", "id", "at"}`` (:class:`Began`: the job's code is about to
run, ``at`` being the child's wall clock), ``{"t": "progress", "id", "fraction",
"message"}``, ``{"t": "skipped", "id", "skipped"}`` and ``{"t": "done", "id", "ok", "result"
| "error", "retry", "delay", "fail", "output", "strays"?, "busy"?, "crashed"?}`` (``busy``:
the seconds a warm worker spent on the job, by its own clock; ``strays``: how
many processes the job left running, killed by the worker; ``crashed``: the worker kills
itself after this answer -- its job went over its ``memory_limit``).

The host treats anything else on the channel as a protocol violation by the job and ends the
attempt as ``crashed``: a job can be malicious, the host must not be.  What the child reads
comes from the host and is trusted.

The fork server (``process`` isolation on POSIX) has a channel of its own.  Host -> server:
:class:`ForkRequest` ``{"t": "fork", "n", "output", "file": [dev, ino], "job": {...as
above}}`` (``output``: the capture file the host created and keeps open; the child opens it
only if it is still that file) and :class:`KillRequest` ``{"t": "kill", "n", "force"}``,
where ``n`` is a key the host picks per attempt, and, on a socket of their own (with the
warm worker's two pipe ends attached, ``SCM_RIGHTS``), :class:`PoolRequest` ``{"t": "pool",
"n", "output", "file": [dev, ino], "label"}``: fork a warm (``pool``) worker whose channel is
those pipes, straight to the host.  Server -> host: each line a forked child
wrote, verbatim behind its key (``b"<n> " + line``), decoded with :func:`decode` like any
worker's; and the server's own ``{"t": "started", "n", "pid"}``, ``{"t": "broken", "n",
"why"}`` and ``{"t": "exited", "n", "code", "why"?, "strays"?}`` (``strays``: processes of
the child's job the server killed, when it was killed or died).  The key comes from the
server, never from the child, so a job cannot answer for another.

The worker child imports this module, so it stays cheap to import: the records are
plain slotted classes (see :class:`_Record`), and :mod:`asyncjobs.models` (enums, datetime:
~6 ms) is imported only by the host-side decoders that build its records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ..models import Claimed, ErrorInfo, Outcome

MAX_MESSAGE_TEXT = 2000


class _Record:
    """A message as a plain slotted class: one costs microseconds to define, where a slotted
    dataclass costs ~0.5 ms and a ``NamedTuple`` ~0.1 ms, and the child defines them all."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable by nature, like a dataclass

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"


class ProtocolError(Exception):
    """The worker sent something that is not a valid message."""


def _line(message: Mapping[str, Any]) -> bytes:
    return orjson.dumps(message) + b"\n"


# -- host -> worker ----------------------------------------------------------------------


class JobRequest(_Record):
    """An attempt to run, as the child sees it."""

    __slots__ = ("args", "attempt", "cls", "id", "kwargs", "method")

    def __init__(self,
                 id: int,
                 attempt: int,
                 cls: str,
                 method: str,
                 *,
                 args: Sequence[Any],
                 kwargs: Mapping[str, Any]) -> None:
        self.id = id
        self.attempt = attempt
        self.cls = cls
        self.method = method
        self.args = args
        self.kwargs = kwargs


class SkipRequest(_Record):
    """Take back job ``id`` if it has not started; answered by exactly one ``skipped``."""

    __slots__ = ("id",)

    def __init__(self, id: int) -> None:
        self.id = id


def _job(job: Claimed) -> dict[str, object]:
    return {"t": "job", "id": job.id, "attempt": job.attempt, "class": job.cls,
            "method": job.method, "args": job.args, "kwargs": job.kwargs}


def encode_job(job: Claimed) -> bytes:
    return _line(_job(job))


def encode_skip(job_id: int) -> bytes:
    return _line({"t": "skip", "id": job_id})


def _job_request(msg: Mapping[str, Any]) -> JobRequest:
    return JobRequest(msg["id"], msg.get("attempt", 1), msg["class"], msg["method"],
                      args=msg.get("args") or [], kwargs=msg.get("kwargs") or {})


def decode_request(line: bytes) -> JobRequest | SkipRequest:
    """In the child: one message from the host."""
    msg = orjson.loads(line)
    if msg.get("t") == "skip":
        return SkipRequest(msg["id"])
    return _job_request(msg)


# -- worker -> host ------------------------------------------------------------------------


class ErrorReport(_Record):
    """What the child says about an exception: names only, never the object."""

    __slots__ = ("message", "mro", "traceback", "type")

    def __init__(self, type: str, message: str, traceback: str, mro: Sequence[str]) -> None:
        self.type = type
        self.message = message
        self.traceback = traceback
        self.mro = mro


class Reply(_Record):
    """The child's answer for one job, before its output tail is attached."""

    __slots__ = ("crashed", "delay", "error", "fail", "ok", "result", "retry", "strays")

    def __init__(self,
                 ok: bool,
                 result: Any = None,
                 *,
                 error: ErrorReport | None = None,
                 retry: bool = False,
                 delay: float | None = None,
                 fail: bool = False,
                 crashed: bool = False) -> None:
        self.ok = ok
        self.result = result
        self.error = error
        self.retry = retry  # raise Retry(...)
        self.delay = delay
        self.fail = fail  # raise Fail(...), a refusal, or arguments that cannot fit
        self.crashed = crashed  # the worker kills itself after this answer (memory limit)
        self.strays = 0  # processes the job left running, killed by the worker


def encode_began(job_id: int, at: float) -> bytes:
    return _line({"t": "started", "id": job_id, "at": at})


def encode_progress(job_id: int, fraction: float, message: str | None) -> bytes:
    return _line({"t": "progress", "id": job_id, "fraction": fraction, "message": message})


def encode_skipped(job_id: int, skipped: bool) -> bytes:
    return _line({"t": "skipped", "id": job_id, "skipped": skipped})


def encode_done(job_id: int, reply: Reply, output: str = "", busy: float | None = None,
                ) -> bytes:
    message: dict[str, Any] = {"t": "done", "id": job_id, "ok": reply.ok, "output": output}
    if reply.strays:
        message["strays"] = reply.strays
    if busy is not None:
        message["busy"] = round(busy, 6)
    if reply.ok:
        message["result"] = reply.result
        return _line(message)
    error = reply.error
    assert error is not None
    message.update(retry=reply.retry, delay=reply.delay, fail=reply.fail, error={
        "type": error.type, "message": error.message, "traceback": error.traceback,
        "mro": list(error.mro)})
    if reply.crashed:
        message["crashed"] = True
    return _line(message)


class Began(_Record):
    """The worker is starting the job's code now (``at``: its wall clock, epoch seconds)."""

    __slots__ = ("at", "job_id")

    def __init__(self, job_id: int, at: float) -> None:
        self.job_id = job_id
        self.at = at


class Progress(_Record):
    __slots__ = ("fraction", "job_id", "message")

    def __init__(self, job_id: int, fraction: float, message: str | None) -> None:
        self.job_id = job_id
        self.fraction = fraction
        self.message = message


class Skipped(_Record):
    """The answer to a ``skip``: whether the job was taken back before it started."""

    __slots__ = ("job_id", "skipped")

    def __init__(self, job_id: int, skipped: bool) -> None:
        self.job_id = job_id
        self.skipped = skipped


class Done(_Record):
    __slots__ = ("job_id", "outcome")

    def __init__(self, job_id: int, outcome: Outcome) -> None:
        self.job_id = job_id
        self.outcome = outcome


def _str(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    value = obj.get(key, default)
    return value if isinstance(value, str) else default


def _error(obj: object) -> ErrorInfo:
    from ..models import ErrorInfo  # noqa: PLC0415 - host side only (see the docstring)

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


def decode(line: bytes) -> Began | Progress | Skipped | Done:
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
    if kind == "started":
        at = msg.get("at")
        if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
            raise ProtocolError("started without a numeric time")
        return Began(msg["id"], float(at))
    if kind == "skipped":
        return Skipped(msg["id"], msg.get("skipped") is True)
    if kind != "done":
        raise ProtocolError(f"unknown message type {kind!r}")
    return Done(msg["id"], _outcome(msg))


def _outcome(msg: Mapping[str, Any]) -> Outcome:
    from ..models import Outcome, OutcomeKind  # noqa: PLC0415 - host side only

    output = _str(msg, "output")
    strays = _count(msg, "strays")
    busy = msg.get("busy")
    busy = float(busy) if isinstance(busy, int | float) and 0 <= busy < 1e9 else None
    if msg.get("ok") is True:
        return Outcome(OutcomeKind.COMPLETED, result=msg.get("result"), exit_code=None,
                       output=output, strays=strays, busy=busy)
    delay = msg.get("delay")
    return Outcome(
        OutcomeKind.CRASHED if msg.get("crashed") is True else OutcomeKind.FAILED,
        error=_error(msg.get("error")),
        output=output,
        strays=strays,
        busy=busy,
        retry_requested=msg.get("retry") is True,
        retry_delay=float(delay) if isinstance(delay, int | float) and delay >= 0 else None,
        fail_now=msg.get("fail") is True,
    )


# -- host -> fork server -------------------------------------------------------------------


class ForkRequest(_Record):
    __slots__ = ("identity", "job", "key", "output")

    def __init__(self, key: int, output: str, identity: tuple[int, int], job: JobRequest) -> None:
        self.key = key
        self.output = output
        self.identity = identity  # (st_dev, st_ino) of the capture file the host created
        self.job = job


class KillRequest(_Record):
    __slots__ = ("force", "key")

    def __init__(self, key: int, force: bool) -> None:
        self.key = key
        self.force = force


def encode_fork(key: int, output: str, identity: tuple[int, int], job: Claimed) -> bytes:
    """Ask the fork server for a child running ``job``, its output captured in ``output``:
    the file the host created there, ``identity`` being its ``(st_dev, st_ino)``."""
    return _line({"t": "fork", "n": key, "output": output, "file": list(identity),
                  "job": _job(job)})


def encode_kill(key: int, *, force: bool) -> bytes:
    return _line({"t": "kill", "n": key, "force": force})


class PoolRequest(_Record):
    __slots__ = ("identity", "key", "label", "output")

    def __init__(self, key: int, output: str, identity: tuple[int, int], label: str) -> None:
        self.key = key
        self.output = output
        self.identity = identity  # (st_dev, st_ino) of the capture file the host created
        self.label = label  # the worker's procs.MARKER label, inherited by what its jobs start


def encode_pool(key: int, output: str, identity: tuple[int, int], label: str) -> bytes:
    """Ask the fork server for a warm worker; its job and channel pipes travel with this."""
    return _line({"t": "pool", "n": key, "output": output, "file": list(identity),
                  "label": label})


def decode_server_request(line: bytes) -> ForkRequest | KillRequest | PoolRequest:
    """In the fork server: one request from the host."""
    msg = orjson.loads(line)
    if msg["t"] == "kill":
        return KillRequest(msg["n"], msg["force"])
    dev, ino = msg["file"]
    if msg["t"] == "pool":
        return PoolRequest(msg["n"], msg["output"], (dev, ino), msg["label"])
    return ForkRequest(msg["n"], msg["output"], (dev, ino), _job_request(msg["job"]))


# -- fork server -> host -------------------------------------------------------------------


def encode_server_started(key: int, pid: int) -> bytes:
    return _line({"t": "started", "n": key, "pid": pid})


def encode_broken(key: int, why: str) -> bytes:
    return _line({"t": "broken", "n": key, "why": why})


def encode_exited(key: int, code: int | None, why: str | None = None, strays: int = 0,
                  ) -> bytes:
    message: dict[str, Any] = {"t": "exited", "n": key, "code": code}
    if why is not None:
        message["why"] = why
    if strays:
        message["strays"] = strays
    return _line(message)


class Forwarded(_Record):
    """A line a forked child wrote, to be decoded (strictly) by its attempt."""

    __slots__ = ("key", "line")

    def __init__(self, key: int, line: bytes) -> None:
        self.key = key
        self.line = line


class Started(_Record):
    """The server forked the child for attempt ``key``: its pid."""

    __slots__ = ("key", "pid")

    def __init__(self, key: int, pid: int) -> None:
        self.key = key
        self.pid = pid


class Broken(_Record):
    """The server gave up on a child's pipe (a line over the limit) and killed it."""

    __slots__ = ("key", "why")

    def __init__(self, key: int, why: str) -> None:
        self.key = key
        self.why = why


class Exited(_Record):
    """The server reaped a child (``code`` as ``Popen.returncode``) or could not fork it."""

    __slots__ = ("code", "key", "strays", "why")

    def __init__(self, key: int, code: int | None, why: str | None, strays: int = 0) -> None:
        self.key = key
        self.code = code
        self.why = why
        self.strays = strays


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


def _count(obj: Mapping[str, Any], key: str) -> int:
    """A non-negative integer field, 0 if absent or not one."""
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
