"""Streams: the assembled output is masked for the event; feeding never blocks or parses."""

from __future__ import annotations

import orjson
from pii_values import HASH_KEY

from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.sampling import Decision
from sidecar.privacy.streams import StreamAssembler


def sse(*chunks: object) -> list[bytes]:
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def chat_delta(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"model": "m", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_openai_chat_stream_is_assembled_and_masked(strict: PrivacyProfile,
                                                    analyzer: Analyzer) -> None:
    assembler = StreamAssembler(1 << 20, "text/event-stream; charset=utf-8")
    first = {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    for raw in sse(first, chat_delta("Write to ja"), chat_delta("ne@exam"),
                   chat_delta("ple.com today"), chat_delta(finish="stop")):
        for i in range(0, len(raw), 7):  # chunk boundaries anywhere
            assembler.feed(raw[i:i + 7])
    body, content_type = assembler.assembled()
    assert content_type == "application/json"
    assert orjson.loads(body)["choices"] == [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Write to jane@example.com today"}}]
    result = Masker(strict, analyzer, HASH_KEY).mask(
        Captured("id", response_body=body, response_content_type=content_type),
        Decision(True, "sampled"))
    assert result.payload == {"response": {"model": "m", "choices": [
        {"message": {"content": "Write to <EMAIL_ADDRESS> today"}, "finish_reason": "stop"}]}}


def test_completions_stream_and_other_streams() -> None:
    completions = StreamAssembler(4096, "text/event-stream")
    for raw in sse({"choices": [{"index": 0, "text": "a"}]}, {"choices": [{"index": 0,
                                                                          "text": "b"}]}):
        completions.feed(raw)
    assert orjson.loads(completions.assembled()[0])["choices"][0]["text"] == "ab"
    other = StreamAssembler(4096, "text/event-stream")
    other.feed(b"event: token\ndata: hello\n\ndata: world\n\n")
    assert other.assembled() == (b"hello\nworld", "text/plain; charset=utf-8")
    chunked = StreamAssembler(4096, "application/x-ndjson")
    chunked.feed(b'{"a": 1}\n')
    assert chunked.assembled() == (b'{"a": 1}\n', "application/x-ndjson")


def test_feeding_is_bounded() -> None:
    assembler = StreamAssembler(10, "text/plain")
    assembler.feed(b"0123456789abcdef")
    assembler.feed(b"more")
    assert assembler.truncated and assembler.assembled()[0] == b"0123456789"
