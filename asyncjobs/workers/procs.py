"""Every OS-specific call about processes, behind a few small functions.

Linux is what the project tests; the Windows branches keep the seeds' promise that the
same host runs there (process groups via CREATE_NEW_PROCESS_GROUP, ``taskkill /T`` for a
tree kill).  File calls live in :mod:`asyncjobs.files`.  Worker children import this
module too, so it imports nothing heavy at the top (``subprocess`` alone costs ~8 ms).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

WINDOWS = sys.platform == "win32"
CAN_FORK = hasattr(os, "fork") and not WINDOWS
"""Whether ``process`` isolation can use the fork server; elsewhere it spawns per attempt."""


def new_group_options() -> dict[str, Any]:
    """Keyword arguments for ``create_subprocess_exec`` that start a new process group."""
    if WINDOWS:
        import subprocess  # noqa: PLC0415

        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    return {"start_new_session": True}


def signal_group(pid: int, *, force: bool) -> int:
    """Ask (``force=False``) or make (``force=True``) a worker and its descendants stop.

    On POSIX the worker leads its own session, so its process group id is its pid and the
    signal reaches grandchildren too; on Linux so does every descendant that left the
    group (:func:`signal_tree`), whose count is returned.  A group that is already gone
    is not an error.
    """
    strays = 0 if WINDOWS else len(signal_tree(pid, force=force))
    try:
        if WINDOWS:
            if force:
                import subprocess  # noqa: PLC0415

                subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)],  # noqa: S607
                               capture_output=True, check=False)
            else:
                os.kill(pid, signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        else:
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    return strays


def signal_forked(pid: int, *, force: bool, reaped: bool = False) -> set[int]:
    """Signal a fork server's child and its group (POSIX only: there is no fork elsewhere).

    The child makes its own session first thing after ``fork()``; a kill that arrives
    before that finds no group yet, so it goes to the child itself -- unless the child was
    ``reaped`` already: then its pid is free for anyone and only its group (which keeps the
    id from being reused while any member lives) may be signalled.  Its descendants outside
    the group are signalled too (:func:`signal_tree`); their pids are returned.
    """
    sig = signal.SIGKILL if force else signal.SIGTERM
    strays = signal_tree(pid, force=force, walk=not reaped)
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    except PermissionError:
        pass
    return strays


@functools.cache
def prepare_parent_death_signal() -> Any:
    """libc's ``prctl`` (None where there is none), looked up once: call it in a process that
    forks, so that its children do not each pay for importing ctypes."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # noqa: PLC0415 - only the fork server needs it

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


def set_parent_death_signal() -> bool:
    """Linux: have the kernel SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``).

    For a fork server's child, which leads its own session: nothing else would stop it if
    the server and the host died together.  A no-op (False) on other platforms.
    """
    prctl = prepare_parent_death_signal()
    if prctl is None:
        return False
    pr_set_pdeathsig = 1
    return bool(prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0)


def kill_own_group() -> None:
    """End this worker and everything its job started: called when its host is gone.

    On Linux that includes the descendants that left the group (see :func:`end_strays`).
    On Windows there is no process group to signal from inside; the worker exits and a
    job's own children are left to the operating system.
    """
    if WINDOWS:
        os._exit(1)
    end_strays(0.0)
    os.killpg(os.getpgid(0), signal.SIGKILL)


# -- containment: a job's processes never outlive its attempt (Linux) -------------------

PR_SET_CHILD_SUBREAPER = 36
CONTAINS = sys.platform.startswith("linux") and os.path.isdir("/proc/self/task")
"""Whether escaped descendants can be found and killed (``/proc`` and child subreapers);
elsewhere a job's processes are stopped only through its worker's process group."""


def become_subreaper() -> bool:
    """Linux: descendants orphaned below this process are reparented to it, not to init.

    So a process a job started in a new session (``setsid``, ``start_new_session``, a
    double fork) stays in this process's tree, where :func:`descendants` finds it.
    """
    prctl = prepare_parent_death_signal() if CONTAINS else None
    return prctl is not None and bool(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def _children(pid: int) -> list[int]:
    """``pid``'s children, from ``/proc/<pid>/task/*/children`` (one file per thread)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def _stat(pid: int) -> tuple[str, int] | None:
    """``pid``'s state letter and start time (clock ticks since boot), or None if gone.

    The start time tells a process from a later one that got its pid.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()  # the name may hold spaces and parens
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def descendants(pid: int) -> dict[int, int]:
    """Every live (not zombie) descendant of ``pid``: pid -> start time.  Linux only."""
    found: dict[int, int] = {}
    if not CONTAINS:
        return found
    todo = _children(pid)
    while todo:
        child = todo.pop()
        if child in found:
            continue
        info = _stat(child)
        if info is None:
            continue
        if info[0] != "Z":
            found[child] = info[1]
        todo.extend(_children(child))
    return found


def _signal_known(known: dict[int, int], sig: int) -> None:
    """Signal each process of ``known`` that is still the process recorded (same start)."""
    for pid, start in known.items():
        info = _stat(pid)
        if info is not None and info[1] == start and info[0] != "Z":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _reap_any() -> bool:
    """Reap every child of this process that has exited (strays reparented to it); whether
    any child is left.  In a subreaper, none left means no descendant at all: each one
    either has a living parent chain up to us or was reparented to us."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        return False
    return True


def end_strays(grace: float, *, reap: bool = True) -> int:
    """Kill every process still running below this one; how many there were.

    Called by a worker (a child subreaper, see :func:`become_subreaper`) when its job's
    attempt ends: each descendant gets SIGTERM, then SIGKILL once ``grace`` seconds have
    passed, like the job itself; ``grace`` 0 is SIGKILL at once.  The walk is repeated
    until nothing is left, so a process forked meanwhile is found too.  Zombies the job
    left unreaped are reaped (``reap``) and not counted: they were not running.
    """
    import time  # noqa: PLC0415 - already loaded by the interpreter; a dict lookup

    if not CONTAINS:
        return 0
    seen: dict[int, int] = {}
    deadline = time.monotonic() + grace
    forced = grace <= 0
    for _ in range(1000):  # bounded: a fork bomb outrunning SIGKILL is not waited for
        if reap and not _reap_any():
            break  # the common case, a job that left nothing: one system call
        found = descendants(os.getpid())
        if not found:
            break
        forced = forced or time.monotonic() >= deadline
        if forced:
            _signal_known(found, signal.SIGKILL)
        else:  # SIGTERM once each; the rest of the grace is theirs to exit in
            _signal_known({p: t for p, t in found.items() if seen.get(p) != t},
                          signal.SIGTERM)
        seen.update(found)
        time.sleep(0.005)
    return len(seen)


def resident_bytes(pid: int) -> int:
    """The resident memory of ``pid`` in bytes (``/proc/<pid>/statm``); 0 where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _page_size()
    except (OSError, ValueError, IndexError):
        return 0


def tree_resident_bytes(pid: int) -> int:
    """The resident memory of ``pid`` and every live process below it, in bytes."""
    return resident_bytes(pid) + sum(resident_bytes(p) for p in descendants(pid))


@functools.cache
def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 4096


MARKER = "ASYNCJOBS_WORKER"
"""Environment variable the host gives each worker it starts: a label unique to that worker
(see :func:`worker_label`), inherited by whatever its jobs start -- forked or exec'd -- so
the host can find those processes after the worker itself died and the kernel reparented
them away (see :func:`kill_marked`)."""


def worker_label(name: str) -> str:
    """The label of this host's worker ``name`` (unique per host: its capture file path)."""
    return f"{os.getpid()}:{name}"


def worker_environment(label: str) -> dict[str, str]:
    """The environment to start a worker in: ours, plus its label."""
    return {**os.environ, MARKER: label}


def kill_marked(label: str) -> int:
    """SIGKILL every process carrying the label of a (dead) worker; how many there were.

    For a worker that crashed: its escaped descendants were reparented to init, out of any
    tree; the label in their environment still names them.  A job that starts a process
    with a cleared environment hides it from this; that is the limit.  Linux only (0
    elsewhere).  A zombie's environment reads empty, so the dead are not counted.
    """
    if not CONTAINS:
        return 0
    killed: set[int] = set()
    for _ in range(100):  # again, until none is left: one may fork while we look
        found = [pid for pid in marked(MARKER, label) if pid not in killed]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed.update(found)
    return len(killed)


def marked(variable: str, value: str) -> list[int]:
    """The live processes whose environment has ``variable=value`` (Linux; [] elsewhere).

    Only processes whose environment we may read (same user, or root) are seen.
    """
    if not CONTAINS:
        return []
    needle = f"\0{variable}={value}\0".encode()
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    found: list[int] = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in b"\0" + f.read(1 << 20):
                    found.append(pid)
        except OSError:
            continue
    return found


_trees: dict[int, tuple[int | None, dict[int, int]]] = {}
"""The start time and descendants of each worker asked to stop, as seen when it was asked:
by the time SIGKILL is due the worker may be gone and its orphans reparented away."""


def signal_tree(pid: int, *, force: bool, walk: bool = True) -> set[int]:
    """Signal the descendants of the worker ``pid`` that left its process group (Linux).

    The worker is a child subreaper, so while it lives every process its job started is
    in its tree; they are recorded here on the first (SIGTERM) call and signalled again
    with SIGKILL on the forced one, even if the worker has died and they were reparented.
    Returns their pids.  ``walk=False``: ``pid`` was reaped, its id may be reused: only
    the processes recorded before are signalled.  A no-op where :data:`CONTAINS` is False.
    """
    if not CONTAINS:
        return set()
    root = _stat(pid)
    first = pid not in _trees
    start, known = _trees.setdefault(pid, (None if root is None else root[1], {}))
    if walk and root is not None and (first or root[1] == start):
        known.update(descendants(pid))  # not once its pid may be someone else's
    for stray in list(known):
        known.update(descendants(stray))  # what the recorded ones started since
    _signal_known(known, signal.SIGKILL if force else signal.SIGTERM)
    if force:
        del _trees[pid]
    return set(known)


def kill_orphans(known: set[int]) -> set[int]:
    """SIGKILL this subreaper's children that it did not start (not in ``known``) and all
    below them: processes of a child that died, reparented here.  Returns their pids."""
    if not CONTAINS:
        return set()
    found: dict[int, int] = {}
    for pid in _children(os.getpid()):
        info = _stat(pid)
        if pid in known or info is None or info[0] == "Z":
            continue
        found[pid] = info[1]
        found.update(descendants(pid))
    _signal_known(found, signal.SIGKILL)
    return set(found)


def describe_exit(code: int | None) -> str:
    """A human description of a worker's exit status (negative = killed by a signal)."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def on_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT or SIGTERM (Ctrl+C / Ctrl+Break on Windows)."""
    if WINDOWS:
        signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(callback))
        signal.signal(signal.SIGBREAK, lambda *_: loop.call_soon_threadsafe(callback))  # type: ignore[attr-defined]
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, callback)


def raise_open_file_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit; return the new soft
    limit (None where there is no such limit: Windows).  Each API connection holds a file
    descriptor, and the default soft limit (often 1024) is far below what the kernel allows.
    """
    if WINDOWS:
        return None
    import resource  # noqa: PLC0415 - POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard not in (resource.RLIM_INFINITY, soft):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft
