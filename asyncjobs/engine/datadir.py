"""The data directory's trust rules: who may own it, how its files are created and read.

Everything in ``data_dir`` is private to the host's OS user: job arguments, results and
tracebacks in the store, the API token, the logs.  So the directory is created 0700 and
refused if another user owns it or anyone else may write in it (a planted file or symlink
would otherwise be trusted).  Files are created 0600 and opened with ``O_NOFOLLOW``, so a
symlink planted where a log or ``host.json`` goes is never followed to its target.  The
token is written atomically (temp file, fsync, rename, fsync the directory): a start that
dies half-way leaves no token, never an empty one.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from ..errors import Unavailable
from ..files import fsync_path

TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
HOST_FILE = "host.json"
PRIVATE_DIRS = ("logs",)  # created by the host inside data_dir; tightened like it
# What this module writes: 43 characters of token_urlsafe(32).  Anything shorter, or with
# other characters, is not ours (or was cut short) and is refused, never used as a secret.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,256}")
# Windows has no O_NOFOLLOW (and no POSIX modes): there the flags are simply absent.
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _posix() -> bool:
    return os.name == "posix"


def prepare(data_dir: Path, files: tuple[str, ...] = ()) -> None:
    """Create ``data_dir`` (0700) or check an existing one; tighten the host's own files;
    create ``files`` (0600) if missing, so that a library creating them later (SQLite, whose
    journal files copy the database's mode) cannot make them readable by others.

    Refused (with how to fix it): a directory owned by another user, or writable by group
    or others.  A directory of ours that is merely readable by others is narrowed to 0700,
    and files the host made before this rule existed to 0600 (but for the token, which
    :func:`load_or_create_token` refuses if others could have read it).
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _posix():
        return
    info = data_dir.stat()
    if info.st_uid != os.geteuid():
        raise Unavailable(f"the data directory {data_dir} belongs to another user "
                          f"(uid {info.st_uid}); use a data_dir of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Unavailable(f"the data directory {data_dir} is writable by other users, so "
                          f"its files cannot be trusted; check them, then "
                          f"'chmod 700 {data_dir}'")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(data_dir, 0o700)
    for directory in (data_dir, *(data_dir / d for d in PRIVATE_DIRS)):
        _tighten_files(directory)
    for name in PRIVATE_DIRS:  # made 0755 by versions before the logs were created 0700
        _tighten_dir(data_dir / name)
    for name in files:
        os.close(open_private(data_dir / name, os.O_WRONLY | os.O_CREAT))


def _tighten_dir(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        info = directory.lstat()
        if (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
                and info.st_mode & 0o077):
            os.chmod(directory, 0o700)


def _tighten_files(directory: Path) -> None:
    uid = os.geteuid()
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(directory):
            info = entry.stat(follow_symlinks=False)
            # Not the token: one that others could read is compromised, and is refused.
            if (stat.S_ISREG(info.st_mode) and info.st_uid == uid
                    and info.st_mode & 0o077 and entry.name != TOKEN_FILE):
                os.chmod(entry.path, 0o600)


def open_private(path: Path, flags: int = os.O_RDWR | os.O_CREAT | os.O_APPEND) -> int:
    """``os.open`` for a file of the data directory: mode 0600, never through a symlink."""
    return os.open(path, flags | NOFOLLOW | CLOEXEC, 0o600)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (0600) all at once: readers see the old or the new
    file, never a part; a symlink at ``path`` is replaced, not followed."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = open_private(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    fsync_path(path.parent)



def load_or_create_token(data_dir: Path) -> str:
    """The API token from ``<data_dir>/token``, made (atomically, 0600) at first start.

    An existing file must be a regular 0600 file of this user holding one token; else the
    host refuses to start and says how to fix it (it never serves with a guessable token).
    """
    path = data_dir / TOKEN_FILE
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        token = secrets.token_urlsafe(32)
        write_atomic(path, (token + "\n").encode("ascii"))
        return token
    except OSError as exc:  # ELOOP: a symlink was planted there
        raise _bad_token(path, f"cannot be opened safely ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _bad_token(path, "is not a regular file")
        if _posix() and (info.st_uid != os.geteuid() or info.st_mode & 0o077):
            raise _bad_token(path, f"must be owned by this user with mode 0600 (it is "
                                   f"{stat.S_IMODE(info.st_mode):o}, uid {info.st_uid})")
        text = f.read(1024).decode("ascii", "replace").strip()
    if not TOKEN_PATTERN.fullmatch(text):
        raise _bad_token(path, "is empty, too short or malformed (a start that died while "
                               "writing it?)")
    return text


def adopt_token(data_dir: Path, token: str) -> None:
    """Make ``token`` this data directory's token: a host adopts the token the other hosts
    of its store share (PostgreSQL).  Checked like a token file, written like one."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise Unavailable("the API token shared through the store is empty, too short or "
                          "malformed; fix it there (docs/scaling.md) and start again")
    write_atomic(data_dir / TOKEN_FILE, (token + "\n").encode("ascii"))


def _bad_token(path: Path, problem: str) -> Unavailable:
    return Unavailable(f"the token file {path} {problem}; delete it and start again to make "
                       "a new token (clients then need the new one)")


def read_token(data_dir: Path) -> str | None:
    """Client side: the token in ``<data_dir>/token`` if there is a readable one."""
    try:
        fd = open_private(data_dir / TOKEN_FILE, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read(1024).decode("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
