"""The request-filter stage: checks that run before anything is sent upstream.

Each filter returns nothing to continue or raises ``RequestRejected`` for a local,
stamped reply (Envoy's continue / local-reply verdicts). Header size and count limits
are enforced earlier, by the HTTP parser (see ``sidecar.proxy.protocol``), because a
request over them cannot be parsed at all.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar.errors import RequestRejected


async def read_request_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, or ``RequestRejected`` (413) past ``limit`` bytes.

    A declared Content-Length over the limit is refused before a byte of body is read.
    """
    if not request.body_exists:
        return b""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestRejected(
            f"request body of {declared} bytes is over the {limit}-byte limit",
            status=413, code="body_too_large",
        )
    if declared is not None:
        try:
            return await request.content.readexactly(declared)
        except asyncio.IncompleteReadError as exc:
            raise RequestRejected("request body shorter than its Content-Length",
                                  code="incomplete_body") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise RequestRejected(
                f"request body is over the {limit}-byte limit", status=413,
                code="body_too_large",
            )
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
