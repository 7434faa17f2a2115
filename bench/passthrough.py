"""Minimal aiohttp + uvloop pass-through proxy: the "Python ceiling" for the sidecar.

It does only what any aiohttp proxy has to do — one pooled ``ClientSession``, forward
method, path, query, headers and body, relay the answer whole (or chunk by chunk for
SSE and other unsized bodies) — and none of what the sidecar adds: no stamping, no
events, no metrics, no timeouts beyond aiohttp's defaults. Like the sidecar it sits on
aiohttp's low-level ``web.Server``, so the gap between the two is the sidecar's own work.

    python bench/passthrough.py --listen-port 8081 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Iterable

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict

# Hop-by-hop fields must not be forwarded, and aiohttp recomputes the framing ones itself.
DROP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                  "proxy-connection", "host", "content-length"})


def _forwardable(items: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in items if k.lower() not in DROP)


async def serve(listen_host: str, listen_port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000),  # same pool size as the sidecar's default
        auto_decompress=False,  # relay bytes as sent, or Content-Encoding would lie
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type", "Accept"),
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        async with session.request(request.method, upstream + request.raw_path,
                                   headers=_forwardable(request.headers.items()), data=body or None,
                                   allow_redirects=False) as up:
            headers = _forwardable(up.headers.items())
            if up.content_length is None or "text/event-stream" in up.content_type:
                response = web.StreamResponse(status=up.status, reason=up.reason,
                                              headers=headers)
                await response.prepare(request)
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
            return web.Response(status=up.status, reason=up.reason, headers=headers,
                                body=await up.read())

    runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, listen_host, listen_port, backlog=1024, reuse_address=True).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Minimal aiohttp pass-through proxy.")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="Base URL, e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    uvloop.run(serve(args.listen_host, args.listen_port, args.upstream.rstrip("/")))


if __name__ == "__main__":
    main()
