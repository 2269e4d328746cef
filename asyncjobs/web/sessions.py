"""Dashboard sign-in: one-time links, short-lived sessions and event-stream tickets.

A browser never holds the API token and never gets a cookie (a cookie for 127.0.0.1 goes
to *every* port of that host, so any other local listener could replay it).  Instead:

1. ``asyncjobs dashboard`` asks for a one-time sign-in code (valid two minutes);
2. the sign-in page's script exchanges it (``POST /api/sessions``) for a session token that
   it keeps in ``sessionStorage``, which is scoped to the origin: scheme, host *and* port;
3. the dashboard sends it as ``Authorization: Bearer <session>`` on every request;
4. ``EventSource`` cannot send headers, so the event stream is opened with a ticket in the
   query string: single-use, valid for a few seconds, good for ``/api/events`` only.

Sessions are kept by a hash of their token, in memory and in ``<data_dir>/sessions.json``
(0600; hashes and expiry times only, so the file holds no usable credential) so that an open
dashboard survives a host restart.  They expire after ``session_ttl``;
``POST /api/sessions/revoke`` ends them all without touching the API token.  Codes and
tickets live only in memory: a restart voids them, and they are short-lived anyway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from ..engine.datadir import open_private, write_atomic

log = logging.getLogger("asyncjobs.web")

SESSIONS_FILE = "sessions.json"
LOGIN_CODE_TTL = 120.0
TICKET_TTL = 30.0
MAX_ENTRIES = 10_000  # per table: a flood of sign-ins cannot grow the host's memory forever


def _key(secret: str) -> str:
    # Stored and looked up by hash: the table never holds a usable credential, and a dict
    # lookup on a hash leaks nothing useful through timing.
    return hashlib.sha256(secret.encode("ascii", "replace")).hexdigest()


class _Table:
    """Secrets with an expiry time; ``take`` makes one single-use."""

    def __init__(self, ttl: float, clock: Callable[[], float],
                 on_change: Callable[[dict[str, float]], None] | None = None) -> None:
        self.ttl = ttl
        self._clock = clock
        self._on_change = on_change
        self._expiry: dict[str, float] = {}

    def restore(self, table: dict[str, float]) -> None:
        self._expiry = dict(table)

    def changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._expiry)

    def issue(self) -> str:
        now = self._clock()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        if len(self._expiry) >= MAX_ENTRIES:
            del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
        secret = secrets.token_urlsafe(32)
        self._expiry[_key(secret)] = now + self.ttl
        self.changed()
        return secret

    def valid(self, secret: str | None) -> bool:
        if not secret or not secret.isascii():
            return False
        expiry = self._expiry.get(_key(secret))
        return expiry is not None and expiry > self._clock()

    def take(self, secret: str | None) -> bool:
        ok = self.valid(secret)
        if ok and secret:
            del self._expiry[_key(secret)]
            self.changed()
        return ok

    def clear(self) -> int:
        count = len(self._expiry)
        self._expiry.clear()
        self.changed()
        return count


class Sessions:
    """The three tables of dashboard sign-in; ``clock`` is wall-clock time (sessions outlive
    the process); ``path`` is where the session table is kept (None: in memory only)."""

    def __init__(self, session_ttl: float, clock: Callable[[], float] = time.time,
                 path: Path | None = None) -> None:
        self.codes = _Table(LOGIN_CODE_TTL, clock)
        self.sessions = _Table(session_ttl, clock, self._save if path else None)
        self.tickets = _Table(TICKET_TTL, clock)
        self.path = path
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with os.fdopen(open_private(path, os.O_RDONLY), "rb") as f:
                table = orjson.loads(f.read())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("dashboard sessions not restored from %s (%s); sign in again",
                        path, exc)
            return
        if isinstance(table, dict):
            self.sessions.restore({k: float(t) for k, t in table.items()
                                   if isinstance(k, str) and isinstance(t, int | float)})

    def _save(self, table: dict[str, float]) -> None:
        assert self.path is not None
        try:
            write_atomic(self.path, orjson.dumps(table))
        except OSError as exc:  # sessions still work; only a restart would forget them
            log.warning("cannot save dashboard sessions to %s: %s", self.path, exc)

    def login_code(self) -> str:
        return self.codes.issue()

    def exchange(self, code: str | None) -> str | None:
        """A new session token for an unused, unexpired sign-in code; else None."""
        return self.sessions.issue() if self.codes.take(code) else None

    def is_session(self, token: str | None) -> bool:
        return self.sessions.valid(token)

    def ticket(self) -> str:
        return self.tickets.issue()

    def use_ticket(self, ticket: str | None) -> bool:
        return self.tickets.take(ticket)

    def revoke_all(self) -> int:
        """End every session (and the tickets they drew); how many sessions there were."""
        self.tickets.clear()
        return self.sessions.clear()
