"""The request-filter stage: checks that run before anything is sent upstream.

Each filter returns nothing to continue or raises ``RequestRejected`` for a local,
stamped reply (Envoy's continue / local-reply verdicts). Header size and count limits
are enforced earlier, by the HTTP parser (see ``sidecar.proxy.protocol``), because a
request over them cannot be parsed at all.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from sidecar.errors import RequestRejected


async def read_request_body(request: web.BaseRequest, limit: int, idle_s: float) -> bytes:
    """The whole request body, or ``RequestRejected``: 400 for Transfer-Encoding in an
    HTTP/1.0 request or a chunk the parser refused part-way (``bad_framing``), 501 for a
    transfer coding other than chunked, 413 past ``limit`` bytes, 408 when no byte of it
    arrives for ``idle_s`` (a stalled client), 400 when it ends short.

    A declared Content-Length over the limit is refused before a byte of body is read;
    below it, a client waiting for ``100 Continue`` gets one (RFC 9110, 10.1.1): curl, for
    one, waits a second for it before sending a body over 1 KiB.
    """
    if not request.body_exists:
        return b""
    codings = ",".join(request.headers.getall("transfer-encoding", ())).lower()
    if codings and request.version < (1, 1):
        # RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding; a front proxy may have framed
        # this body differently (a desync): refused, and the connection closed.
        raise RequestRejected("Transfer-Encoding in an HTTP/1.0 request",
                              code="bad_framing")
    if codings and any(c.strip() not in ("chunked", "") for c in codings.split(",")):
        # RFC 9112 §6.1: aiohttp removes the chunked framing only; forwarding the rest
        # undecoded, without the header that names it, would hand the model garbage.
        raise RequestRejected(f"transfer coding {codings!r} is not supported",
                              status=501, code="unsupported_transfer_coding")
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestRejected(
            f"request body of {declared} bytes is over the {limit}-byte limit",
            status=413, code="body_too_large",
        )
    if request.version >= (1, 1) and \
            request.headers.get("expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started
    chunks: list[bytes] = []
    size = 0
    content = request.content
    if content.is_eof():  # the whole body came with the head: no timer to arm
        body = content.read_nowait()
        if len(body) > limit:
            raise RequestRejected(f"request body is over the {limit}-byte limit",
                                  status=413, code="body_too_large")
        chunks.append(body)
        size = len(body)
    else:
        size = await _read_slowly(request, limit, idle_s, chunks)
    if declared is not None and size < declared:
        raise RequestRejected("request body shorter than its Content-Length",
                              code="incomplete_body")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _read_slowly(request: web.BaseRequest, limit: int, idle_s: float,
                       chunks: list[bytes]) -> int:
    """The body as it arrives, each chunk within ``idle_s`` of the last; its size."""
    size = 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle_s) as silence:
            async for chunk in request.content.iter_any():
                silence.reschedule(loop.time() + idle_s)
                size += len(chunk)
                if size > limit:
                    raise RequestRejected(
                        f"request body is over the {limit}-byte limit", status=413,
                        code="body_too_large",
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise RequestRejected(f"no request body data for {idle_s:g} s", status=408,
                              code="client_body_timeout") from None
    except HttpProcessingError as exc:  # the parser refused the body part-way
        raise RequestRejected(f"malformed request body: {exc.message}"[:200],
                              code="bad_framing") from None
    return size
