"""Strict parsing of what a request carries: its JSON body, integer parameters, job ids.

Numbers in URLs are ASCII digits only (``int()`` would also take ``١٢``, ``1_2`` and
`` 12 ``).  What a JSON body may hold (depth, number range) is the registry's rule, checked
where a submit is parsed, so it holds for in-process submits too.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, InvalidField, TooLarge
from .contract import HOST_KEY

DIGITS = re.compile(r"[0-9]{1,20}", re.ASCII)
MAX_ID = 2**63 - 1


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
    return value


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
