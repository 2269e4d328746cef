"""The API token and the request checks that keep a localhost API safe from the browser.

A local port is reachable by any web page the operator visits, so besides the bearer token
the API refuses a ``Host`` that is not a loopback name (DNS rebinding) and a state-changing
request whose ``Origin`` is another site (CSRF).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain"})


def load_or_create_token(data_dir: Path) -> str:
    """Read ``<data_dir>/token``, creating it (mode 0600) with a random token at first start."""
    path = data_dir / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
    return token


def replace_token(data_dir: Path, token: str) -> None:
    """Make ``token`` this data directory's token (mode 0600, replaced atomically): a host
    adopts the token its store's other hosts share."""
    path = data_dir / TOKEN_FILE
    tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / TOKEN_FILE).read_text(encoding="ascii").strip() or None
    except OSError:
        return None


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison, so response timing does not leak the token."""
    # A header may carry any bytes; anything not ASCII cannot be our token (and must not
    # reach compare_digest, which refuses non-ASCII str).
    return given is not None and given.isascii() and hmac.compare_digest(expected, given)


def host_name(host_header: str) -> str:
    """The name part of a Host header: ``localhost:8765`` -> ``localhost``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback_host(host_header: str | None, extra: frozenset[str] = frozenset()) -> bool:
    if not host_header:
        return False
    name = host_name(host_header)
    return name in LOOPBACK_NAMES or name in extra or _is_loopback_address(name)


def _is_loopback_address(name: str) -> bool:
    # A real address only: a prefix test would let "127.0.0.1.evil.example" (DNS rebinding) in.
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def is_same_origin(origin: str | None, host_header: str | None) -> bool:
    """An absent Origin (curl, the CLI) is fine; a present one must be this very host."""
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not host_header:
        return False
    return parts.netloc.lower() == host_header.strip().lower()
