"""The ``store`` setting's values: the accepted forms, and how one is shown safely (outside
the store package, so the client can load the config without importing any store)."""

from __future__ import annotations

from .errors import ConfigError

STORE_FORMS = "'sqlite', 'sqlite:///path/to/file.db' or 'postgresql://user@host:5432/db'"
STORE_SCHEMES = ("sqlite", "postgresql", "postgres")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: store URLs go into errors and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostpart}"


def check_store(path: str, value: object) -> str | None:
    """Validate a ``store`` value: None or "" is the default SQLite file in ``data_dir``."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(path, STORE_FORMS, value)
    text = value
    scheme = text.partition("://")[0] if "://" in text else text
    if scheme not in STORE_SCHEMES or (scheme != "sqlite" and "://" not in text):
        raise ConfigError(path, STORE_FORMS, redact_url(text))
    return text
