"""The client side of the §5 event stream: server-sent events decoded into dicts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
import orjson

from ..models import JSONValue

if TYPE_CHECKING:
    from .api_client import AsyncJobsClient


class EventStream:
    """``async with client.events() as stream: async for event in stream`` (SSE, §5).

    Entering returns once the host has subscribed this stream, so no state change made
    after that is missed.  Each event is the decoded ``data`` dict (it has a ``type``).
    A reader that falls behind gets ``{"type": "overflow"}`` and then the stream ends:
    reload what you track and open a new stream.
    """

    def __init__(self, client: AsyncJobsClient) -> None:
        self._client = client
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> EventStream:
        self._response = await self._client._open("GET", "/api/events", read_timeout=None)
        await self._response.content.readline()  # ": connected": the host has subscribed us
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._response is not None:
            self._response.close()

    def __aiter__(self) -> AsyncIterator[dict[str, JSONValue]]:
        if self._response is None:  # not an assert: those vanish under python -O
            raise TypeError("the event stream is not open: use 'async with client.events() "
                            "as stream: async for event in stream'")
        return self._iterate(self._response)

    async def _iterate(self, response: aiohttp.ClientResponse,
                       ) -> AsyncIterator[dict[str, JSONValue]]:
        data: list[bytes] = []
        try:
            async for raw in response.content:
                line = raw.rstrip(b"\r\n")
                if line.startswith(b"data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    event = orjson.loads(b"\n".join(data))
                    data = []
                    if isinstance(event, dict):
                        yield event
        except aiohttp.ClientError as exc:
            raise self._client._lost(exc, "lost the event stream of") from None
