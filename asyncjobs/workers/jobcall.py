"""Calling one job in a worker: allow-list, import, signature check, call, the reply.

The allow-list is re-checked here, in the child, against the ``config.json`` the host wrote,
before the job's module is imported (nothing is imported for a refused name); arguments that
cannot fit the method's signature fail at once instead of as a retryable error; the return
value must be JSON and within ``max_result``.  ``asyncio`` is imported only when a job is a
coroutine.  Used by both the spawned worker (:mod:`asyncjobs.workers.child`) and each child
of the fork server (:mod:`asyncjobs.workers.forkserver_child`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import stat
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import Fail, Retry
from .channel import Channel
from .guard import Limits
from .protocol import ErrorReport, JobRequest, Reply, encode_began


class NotAllowedError(Exception):
    """Raised in the child when the host asks for something outside the allow-list."""


def load_allow_list(config_path: str) -> tuple[dict[str, Any], Limits]:
    """The allow-list the host wrote in the run directory, and the bounds it set."""
    # In the run directory, which a job can write: a regular file only (not a FIFO that
    # would block us, not a symlink to something else).
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    with open(os.open(config_path, flags), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{config_path!r} is not a regular file")
        doc = orjson.loads(f.read())
    jobs = doc.get("jobs", {}) if isinstance(doc, dict) else {}
    return (jobs if isinstance(jobs, dict) else {}), Limits.from_doc(doc)


def resolve(allow: dict[str, Any], cls_name: str, method: str) -> Any:
    """Allow-list first, import second: nothing is imported for a refused name."""
    entry = allow.get(cls_name)
    if (not isinstance(entry, dict) or cls_name.startswith("_") or method.startswith("_")
            or method not in entry.get("methods", [])):
        raise NotAllowedError(f"{cls_name}.{method} is not in the allow-list")
    module_name = entry.get("module", "jobs")
    target = _CLASSES.get((module_name, cls_name))
    if target is None:
        found = getattr(importlib.import_module(module_name), cls_name, None)
        if not isinstance(found, type):
            raise NotAllowedError(f"{module_name} has no class {cls_name}")
        target = _CLASSES[module_name, cls_name] = found
    return getattr(target(), method)


# What a worker looked up once and keeps: it imports a job module once anyway, and these
# lookups (import_module, inspect.signature) were most of a no-op job's cost in the worker.
_CLASSES: dict[tuple[str, str], type] = {}
_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(func: Any) -> inspect.Signature | None:
    """``inspect.signature(func)``, once per function (a bound method's ``self`` excluded:
    every instance of the class gives the same one); None if it has none."""
    key = getattr(func, "__func__", func)
    if key not in _SIGNATURES:
        if len(_SIGNATURES) >= 1024:  # methods made afresh per instance: stay bounded
            _SIGNATURES.clear()
        try:
            _SIGNATURES[key] = inspect.signature(func)
        except (TypeError, ValueError):  # no signature to check (a builtin, say)
            _SIGNATURES[key] = None
    return _SIGNATURES[key]


def call(func: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    result = func(*args, **kwargs)
    if hasattr(result, "__await__"):
        import asyncio  # noqa: PLC0415 - only async jobs pay for asyncio's import

        async def _await() -> Any:
            return await result

        result = asyncio.run(_await())
    return result


def check_arguments(func: Any, job: JobRequest) -> None:
    """Arguments that cannot fit the method's signature fail now, not as a retryable error.

    A ``TypeError`` from the call itself can never succeed on a retry; one raised inside
    the job may.  ``inspect`` is loaded already (by ``dataclasses``), so this costs no import.
    """
    signature = _signature(func)
    if signature is None:  # nothing to check against: let it run
        return
    try:
        signature.bind(*job.args, **job.kwargs)
    except TypeError as exc:
        # Names and defaults only: annotations are often strings (postponed evaluation).
        bare = signature.replace(return_annotation=inspect.Signature.empty, parameters=[
            p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()])
        raise ArgumentsError(f"{job.cls}.{job.method}{bare} cannot take the arguments given: "
                             f"{exc}") from None


def _describe(exc: BaseException) -> tuple[str, str]:
    """The message and traceback of ``exc``, even when its ``__str__`` itself raises."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the worker down
        message = f"<{type(exc).__name__} whose str() raised>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except Exception:
        tb = f"{type(exc).__name__}: {message}\n(traceback unavailable)"
    return message, tb


def error_reply(exc: BaseException, *, retry: bool = False, delay: float | None = None,
                fail: bool = False, with_traceback: bool = True) -> Reply:
    """``with_traceback=False``: a refusal made before the job's code ran, whose traceback
    would show only this module's frames (the message says it all)."""
    message, tb = _describe(exc)
    return Reply(False, retry=retry, delay=delay, fail=fail, error=ErrorReport(
        type(exc).__name__, message[:2000], tb[-20000:] if with_traceback else "",
        [c.__name__ for c in type(exc).__mro__]))


def run_job(job: JobRequest, allow: dict[str, Any], max_result: int, channel: Channel) -> Reply:
    """Resolve, check and call the job; tell the host ``started`` just before its code runs."""
    try:
        func = resolve(allow, job.cls, job.method)
        check_arguments(func, job)
        channel.send(encode_began(job.id, time.time()))
        result = call(func, job.args, job.kwargs)
    except Retry as exc:
        return error_reply(exc, retry=True, delay=exc.delay)
    except (NotAllowedError, ArgumentsError) as exc:
        return error_reply(exc, fail=True, with_traceback=False)
    except Fail as exc:
        return error_reply(exc, fail=True)
    except BaseException as exc:
        return error_reply(exc)
    try:
        encoded = orjson.dumps(result)
    except TypeError as exc:
        return error_reply(ResultError(f"return value is not JSON-serialisable: {exc}"))
    if len(encoded) > max_result:
        return error_reply(ResultError(
            f"return value is {len(encoded)} bytes as JSON; the limit is {max_result}"))
    return Reply(True, result=result)


class ResultError(Exception):
    """The job returned something the host cannot store."""


class ArgumentsError(TypeError):
    """The job's arguments do not fit its method's signature: no retry can help."""
