"""The upstream stage: one pooled keep-alive ``ClientSession`` to the model server.

This is the boundary where aiohttp and asyncio errors become ``sidecar.errors``.
Headers are rewritten per RFC 9110 §7.6.1: hop-by-hop fields (and any the
``Connection`` header names) are removed in both directions; trace context and
``x-request-id`` pass through; stamp headers a client sent are never forwarded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import Settings
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.telemetry import HEADER_INFERENCE_ID, STAMP_HEADERS

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed by aiohttp from the bytes we send; forwarding the client's could contradict them.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", *STAMP_HEADERS}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", *STAMP_HEADERS}


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str]
) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop fields and without the names in ``drop``.

    >>> h = CIMultiDict([("Connection", "close, X-Secret"), ("X-Secret", "1"), ("A", "b")])
    >>> list(end_to_end(h, HOP_BY_HOP).items())
    [('A', 'b')]
    """
    if "connection" in headers:
        drop = drop | _connection_tokens(headers)
    return CIMultiDict([(k, v) for k, v in headers.items() if k.lower() not in drop])


def request_headers(
    headers: CIMultiDictProxy[str], inference_id: str, client: str | None
) -> CIMultiDict[str]:
    """What the upstream gets: end-to-end headers, the sidecar's inference id (so the
    model server can log the same id), and the X-Forwarded-* trio."""
    out = end_to_end(headers, _REQUEST_DROP)
    extra = [(HEADER_INFERENCE_ID, inference_id), ("x-forwarded-proto", "http")]
    host = headers.get("host")
    if host is not None:
        extra.append(("x-forwarded-host", host))
    if client:
        prior = out.pop("x-forwarded-for", None)
        extra.append(("x-forwarded-for", f"{prior}, {client}" if prior else client))
    out.extend(extra)
    return out


def response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return end_to_end(headers, _RESPONSE_DROP)


class Upstream:
    """The model server. Created once per process; ``start()`` inside a running loop."""

    def __init__(self, settings: Settings) -> None:
        self.base_url = settings.upstream_url
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        # aiohttp's sock_read (idle_timeout) already bounds the wait for the headers.
        self._header_timer = (
            None if settings.read_timeout == settings.idle_timeout else settings.read_timeout
        )

    async def start(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.upstream_max_connections, ttl_dns_cache=300, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # relay bytes exactly as the model sent them
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
            timeout=aiohttp.ClientTimeout(
                total=s.total_timeout, sock_connect=s.connect_timeout, sock_read=s.idle_timeout
            ),
            read_bufsize=2**16,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse:
        """Send the request; return the response once its headers have arrived.

        The caller must ``finish`` it. aiohttp's ``sock_read`` timer (``idle_timeout``)
        also covers the wait for the headers, so a separate timer for ``read_timeout`` is
        armed only when the two differ: one fewer timer per request by default.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        pending = self._session.request(
            method, self.base_url + path_qs, headers=headers, data=body or None,
            allow_redirects=False, compress=False,
        )
        try:
            if self._header_timer is None:
                return await pending
            async with asyncio.timeout(self._header_timer):
                return await pending
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("upstream did not answer in time") from None
        except aiohttp.InvalidURL:
            raise UpstreamUnavailable("request target is not a valid URL", status=400,
                                      code="bad_request_target") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(f"upstream unavailable: {type(exc).__name__}") from None


def finish(response: aiohttp.ClientResponse, failed: bool) -> None:
    """Return the connection to the pool, or drop it after a failure or a cancel (its
    state is unknown, so it must never be reused)."""
    if failed:
        response.close()
    else:
        response.release()


async def read_chunks(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Body chunks as they arrive; idle and total timeouts become ``UpstreamTimeout``."""
    try:
        async for chunk in response.content.iter_any():
            yield chunk
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout("upstream went idle mid-body") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"upstream broke off: {type(exc).__name__}") from None


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeout("upstream went idle mid-body") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(f"upstream broke off: {type(exc).__name__}") from None
