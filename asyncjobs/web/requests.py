"""Strict parsing of what a request carries: its JSON body, integer parameters, job ids.

Numbers in URLs are ASCII digits only (``int()`` would also take ``١٢``, ``1_2`` and
`` 12 ``).  JSON integers are kept exact or refused: orjson turns one beyond 64 bits into a
float without a word, so such a body is parsed again (rarely: only when an integral float
that large appears) to tell ``1e30`` from a 30-digit integer.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, InvalidField, TooLarge
from ..registry import check_integers
from .contract import HOST_KEY

DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
MAX_ID = 2**63 - 1
_SUSPECT = float(2**63)  # at or beyond this, an integral float may have been an integer


async def read_json(request: web.Request) -> Any:
    """The request body as JSON: 400 if empty or malformed, 413 if too large."""
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[HOST_KEY].settings.api.max_body_bytes
        raise TooLarge(f"request body over {limit} bytes") from None
    except web.RequestPayloadError:  # e.g. "Content-Encoding: gzip" on a body that is not
        raise BadRequest("could not read the request body; is its Content-Encoding right?") \
            from None
    if not data:
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if _has_suspect_float(value):
        try:
            json.loads(data, parse_int=_exact_int)
        except RecursionError:
            raise InvalidField("body", "is nested too deeply") from None
    return value


def _exact_int(text: str) -> int:
    value = int(text)
    check_integers("body", value)
    return value


def _has_suspect_float(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if abs(item) >= _SUSPECT and item.is_integer():
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


def parse_int(name: str, text: str, low: int, high: int) -> int:
    if not DIGITS.fullmatch(text):
        raise InvalidField(name, f"must be a whole number in ASCII digits, got {text[:50]!r}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidField(name, f"must be between {low} and {high}, got {value}")
    return value


def int_param(request: web.Request, name: str, default: int | None, low: int,
              high: int) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    return parse_int(name, text, low, high)


def job_id(request: web.Request) -> int:
    return parse_int("id", request.match_info["job_id"], 1, MAX_ID)
