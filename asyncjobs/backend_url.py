"""The ``store`` setting's values: the accepted forms, and how one is shown safely (outside
the store package, so the client can load the config without importing any store)."""

from __future__ import annotations

import re

from .errors import ConfigError

STORE_FORMS = "'sqlite', 'sqlite:///path/to/file.db' or 'postgresql://user@host:5432/db'"
STORE_SCHEMES = ("sqlite", "postgresql", "postgres")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: store URLs go into errors and logs.

    Malformed ones too (a missing ``//``, an unescaped ``@`` or ``:`` in the password): they
    are exactly the ones that end up in an error message.  Everything between the user name
    and the *last* ``@`` is hidden, and so is a ``password=`` query parameter."""
    head, at, hostpart = url.rpartition("@")
    if at:
        scheme, sep, userinfo = head.partition("://")
        if not sep:
            scheme, userinfo = "", head
        user, colon, _ = userinfo.partition(":")
        if colon:
            url = f"{scheme}{sep}{user}:***@{hostpart}"
    return _PASSWORD_PARAM.sub(r"\1***", url)


_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


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
