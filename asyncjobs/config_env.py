"""The ``ASYNCJOBS_*`` environment overrides, applied over the settings of ``config.json``.

An empty variable counts as unset.  A value is checked by the same readers as the file's
(:mod:`asyncjobs.config_checks`), and an error names the variable (``$ASYNCJOBS_PORT``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import config_checks as check
from .backend_url import check_store
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

T = TypeVar("T")

# What each converter expects, as an error says it.
WHAT: dict[object, str] = {int: "an integer", float: "a number"}


def _env_number(env: Mapping[str, str], name: str, convert: Callable[[str], T]) -> T | None:
    text = env.get(name)
    if text is None or text == "":
        return None
    try:
        return convert(text)
    except ValueError:
        raise ConfigError(f"${name}", WHAT.get(convert, "a number"), text) from None


def apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Apply the ``ASYNCJOBS_*`` overrides (max attempts, retry delay, port, data dir, ...)."""
    retry = settings.retry
    if (n := _env_number(env, "ASYNCJOBS_MAX_ATTEMPTS", int)) is not None:
        retry = replace(retry, max_attempts=check.integer("$ASYNCJOBS_MAX_ATTEMPTS", n,
                                                          minimum=1))
    if (f := _env_number(env, "ASYNCJOBS_RETRY_DELAY", float)) is not None:
        retry = replace(retry, base_delay=check.number("$ASYNCJOBS_RETRY_DELAY", f))
    api = settings.api
    if (port := _env_number(env, "ASYNCJOBS_PORT", int)) is not None:
        api = replace(api, port=check.port("$ASYNCJOBS_PORT", port))
    if host := env.get("ASYNCJOBS_HOST"):
        api = replace(api, host=host)
    workers = settings.workers
    if (m := _env_number(env, "ASYNCJOBS_WORKERS", int)) is not None:
        workers = replace(workers, max=check.integer("$ASYNCJOBS_WORKERS", m, minimum=1))
    data_dir = settings.data_dir
    if d := env.get("ASYNCJOBS_DATA_DIR"):
        data_dir = Path(d).absolute()
    durability = check.durability("$ASYNCJOBS_DURABILITY",
                                  env.get("ASYNCJOBS_DURABILITY") or settings.durability)
    store = settings.store
    if env.get("ASYNCJOBS_STORE"):
        store = check_store("$ASYNCJOBS_STORE", env["ASYNCJOBS_STORE"])
    return replace(settings, retry=retry, api=api, workers=workers, data_dir=data_dir,
                   durability=durability, store=store)
