"""Where the host is: its URL and token, found without contacting it.

The environment wins, then the files the host writes into its data directory at start
(``host.json`` with its URL, ``token``), then the configured address.  Shared by
:class:`~asyncjobs.client.api_client.AsyncJobsClient` and every CLI client command.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import orjson

from ..config import find_config, load_settings
from ..engine.datadir import HOST_FILE, TOKEN_FILE, read_token
from ..web.auth import connect_host

DEFAULT_URL = "http://127.0.0.1:8765"
DEFAULT_DATA_DIR = Path(".asyncjobs")


def read_host_url(data_dir: Path) -> str | None:
    """The URL a running host wrote to ``<data_dir>/host.json``; None if unreadable."""
    try:
        url = orjson.loads((data_dir / HOST_FILE).read_bytes()).get("url")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return None
    return url if isinstance(url, str) and url else None


def _configured(config: str | Path | None, env: Mapping[str, str],
                ) -> tuple[Path, str, str]:
    """The data directory, the configured URL, and which config they came from."""
    asked = config is not None or bool(env.get("ASYNCJOBS_CONFIG"))
    if asked or find_config(None, env).exists():
        settings = load_settings(config, env)
        fallback = f"http://{connect_host(settings.api.host)}:{settings.api.port}"
        return settings.data_dir, fallback, f"of {find_config(config, env)}"
    data_dir = Path(env.get("ASYNCJOBS_DATA_DIR") or DEFAULT_DATA_DIR).absolute()
    return data_dir, DEFAULT_URL, "with no config file found"


def discover(config: str | Path | None = None,
             env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """Find the host's URL and token without contacting it.

    Each comes from the first of: the environment (``ASYNCJOBS_URL``, ``ASYNCJOBS_TOKEN``),
    then ``<data_dir>/host.json`` and ``<data_dir>/token`` of the configuration (the host
    writes both at start), then the configured address.  With no config file at all (and
    none asked for), the defaults are ``http://127.0.0.1:8765`` and ``./.asyncjobs``.
    """
    env = os.environ if env is None else env
    url, token = env.get("ASYNCJOBS_URL") or None, env.get("ASYNCJOBS_TOKEN") or None
    if url and token:
        return url.rstrip("/"), token
    data_dir, fallback, _ = _configured(config, env)
    url = url or read_host_url(data_dir) or fallback
    return url.rstrip("/"), token or read_token(data_dir)


def token_places(config: str | Path | None = None,
                 env: Mapping[str, str] | None = None) -> str:
    """Where :func:`discover` looks for a token, for a message saying none was found."""
    env = os.environ if env is None else env
    data_dir, _, source = _configured(config, env)
    return f"$ASYNCJOBS_TOKEN and {data_dir / TOKEN_FILE} ({source})"
