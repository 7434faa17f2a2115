"""A small model server for the demo, the tests and the benchmark.

Speaks just enough of the protocols the sidecar fronts:

- ``POST /v1/chat/completions`` and ``/v1/completions``: OpenAI-style JSON, or SSE when
  the body says ``"stream": true``;
- ``POST /v2/models/{model}/infer``: KServe / Triton v2 tensors;
- ``POST /text``: plain text echo; ``GET /v1/models``; ``GET /health``;
- ``/error/{status}``: an error with a JSON body; ``/hang``: never answers;
- ``/stall``: starts a stream, then goes silent; ``/reset``: drops the connection;
- ``/big/{n}``: n bytes of text, chunked.

Test controls, as headers: ``x-demo-chunks`` (SSE chunk count, default 5) and
``x-demo-chunk-delay-ms`` (pause between chunks, default 0).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiohttp import web

MODEL = "demo-llm"


def _completion(content: str, model: str) -> dict[str, object]:
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }


async def _sse(request: web.Request, model: str) -> web.StreamResponse:
    chunks = int(request.headers.get("x-demo-chunks", "5"))
    delay = float(request.headers.get("x-demo-chunk-delay-ms", "0")) / 1000.0
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for i in range(chunks):
        delta = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model,
                 "choices": [{"index": 0, "delta": {"content": f"token{i} "},
                              "finish_reason": None}]}
        await response.write(b"data: " + orjson.dumps(delta) + b"\n\n")
        if delay:
            await asyncio.sleep(delay)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def chat(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "invalid JSON body"}}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": {"message": "expected a JSON object"}}, status=400)
    model = str(body.get("model", MODEL))
    if body.get("stream"):
        return await _sse(request, model)
    messages = body.get("messages") or [{"content": body.get("prompt", "")}]
    last = messages[-1].get("content", "") if isinstance(messages[-1], dict) else ""
    return web.Response(body=orjson.dumps(_completion(f"You said: {str(last)[:200]}", model)),
                        content_type="application/json")


async def kserve_infer(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    data = body["inputs"][0]["data"]
    score = sum(float(x) for x in data) / max(len(data), 1)
    return web.Response(content_type="application/json", body=orjson.dumps({
        "model_name": request.match_info["model"], "id": body.get("id", "1"),
        "outputs": [{"name": "score", "shape": [1], "datatype": "FP32", "data": [score]}],
    }))


async def text(request: web.Request) -> web.Response:
    return web.Response(text=(await request.text()).upper(), content_type="text/plain")


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


async def health(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def error(request: web.Request) -> web.Response:
    status = int(request.match_info["status"])
    return web.json_response({"error": {"message": "model failed", "code": status}},
                             status=status)


async def hang(_: web.Request) -> web.Response:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def stall(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await asyncio.sleep(3600)
    return response


async def reset(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    await asyncio.sleep(0.1)
    return web.Response()


async def big(request: web.Request) -> web.StreamResponse:
    remaining = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await response.prepare(request)
    while remaining > 0:
        n = min(remaining, 65536)
        await response.write(b"x" * n)
        remaining -= n
    await response.write_eof()
    return response


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", chat)
    app.router.add_post("/v2/models/{model}/infer", kserve_infer)
    app.router.add_post("/text", text)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_route("*", "/error/{status}", error)
    app.router.add_route("*", "/hang", hang)
    app.router.add_route("*", "/stall", stall)
    app.router.add_route("*", "/reset", reset)
    app.router.add_get("/big/{n}", big)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Demo model server (OpenAI, KServe v2, text).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None,
                print=None, loop=loop_factory() if loop_factory else None)


if __name__ == "__main__":
    main()
