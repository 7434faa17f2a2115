"""Streams: the assembled output is masked for the event; feeding never blocks or parses."""

from __future__ import annotations

import orjson
import pytest
from pii_values import HASH_KEY

from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.masker import Captured, Masker
from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.sampling import Decision
from sidecar.privacy.streams import TAIL_MARGIN, UNASSEMBLED, StreamAssembler


def whole(max_bytes: int, content_type: str | None = None) -> StreamAssembler:
    """An assembler for a stream the relay saw to its end."""
    assembler = StreamAssembler(max_bytes, content_type)
    assembler.complete = True
    return assembler


def sse(*chunks: object) -> list[bytes]:
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def chat_delta(content: str | None = None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {"model": "m", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_openai_chat_stream_is_assembled_and_masked(strict: PrivacyProfile,
                                                    analyzer: Analyzer) -> None:
    assembler = whole(1 << 20, "text/event-stream; charset=utf-8")
    first = {"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    for raw in sse(first, chat_delta("Write to ja"), chat_delta("ne@exam"),
                   chat_delta("ple.com today"), chat_delta(finish="stop")):
        for i in range(0, len(raw), 7):  # chunk boundaries anywhere
            assembler.feed(raw[i:i + 7])
    body, content_type, omitted = assembler.assembled()
    assert (content_type, omitted) == ("application/json", None) and body is not None
    assert orjson.loads(body)["choices"] == [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Write to jane@example.com today"}}]
    result = Masker(strict, analyzer, HASH_KEY).mask(
        Captured("id", response_body=body, response_content_type=content_type),
        Decision(True, "sampled"))
    assert result.payload == {"response": {"model": "m", "choices": [
        {"message": {"content": "Write to <EMAIL_ADDRESS> today"}, "finish_reason": "stop"}]}}


def test_completions_stream_and_other_streams() -> None:
    completions = whole(4096, "text/event-stream")
    for raw in sse({"choices": [{"index": 0, "text": "a"}]}, {"choices": [{"index": 0,
                                                                          "text": "b"}]}):
        completions.feed(raw)
    body, _, _ = completions.assembled()
    assert body is not None and orjson.loads(body)["choices"][0]["text"] == "ab"
    # Plain-text tokens are joined as the model wrote them: "jane" "@exam" "ple.com".
    tokens = whole(4096, "text/event-stream")
    tokens.feed(b"event: token\ndata: mail jane\n\ndata: @exam\n\ndata: ple.com\n\n")
    assert tokens.assembled() == (b"mail jane@example.com", "text/plain; charset=utf-8", None)
    # JSON-string tokens by their value, not with their quotes between the pieces
    quoted = whole(4096, "text/event-stream")
    quoted.feed(b'data: "mail jane"\n\ndata: "@exam"\n\ndata: "ple.com"\n\n')
    assert quoted.assembled() == (b"mail jane@example.com", "text/plain; charset=utf-8", None)
    # newline-delimited JSON of an unknown shape: omitted, as SSE JSON events are
    chunked = whole(4096, "application/x-ndjson")
    chunked.feed(b'{"a": "jane"}\n{"a": "@example.com"}\n')
    assert chunked.assembled() == (None, None, UNASSEMBLED)
    # one JSON document, large enough to be streamed: as it came
    document = whole(4096, "application/json")
    document.feed(b'{"choices": [{"message": {"content": "hi"}}]}\n')
    assert document.assembled() == (b'{"choices": [{"message": {"content": "hi"}}]}\n',
                                    "application/json", None)


def test_ollama_ndjson_streams_are_joined_line_by_line(strict: PrivacyProfile,
                                                       analyzer: Analyzer) -> None:
    generate = whole(4096, "application/x-ndjson")
    for piece in ("mail jane", ".doe@exam", "ple.com card 4012 ", "8888 8888 1881 ok"):
        generate.feed(orjson.dumps({"model": "llama3", "response": piece, "done": False})
                      + b"\n")
    generate.feed(b'{"model": "llama3", "response": "", "done": true, "eval_count": 9}\n')
    body, ctype, _ = generate.assembled()
    assert body is not None and ctype == "application/json"
    assert orjson.loads(body)["response"] == \
        "mail jane.doe@example.com card 4012 8888 8888 1881 ok"
    result = Masker(strict, analyzer, HASH_KEY).mask(
        Captured("id", response_body=body, response_content_type=ctype),
        Decision(True, "sampled"))
    recorded = orjson.dumps(result.record())
    assert b"jane" not in recorded and b"1881" not in recorded
    chat = whole(4096, "application/x-ndjson")
    for piece in ("write to ja", "ne@example.com"):
        chat.feed(orjson.dumps({"model": "m", "message": {"role": "assistant",
                                                          "content": piece}}) + b"\n")
    body, _, _ = chat.assembled()
    assert body is not None
    assert orjson.loads(body)["message"]["content"] == "write to jane@example.com"


def test_tgi_and_anthropic_streams_are_joined_token_by_token() -> None:
    tgi = whole(4096, "text/event-stream")
    for piece in ("Call +1 212", " 555", " 0143", "</s>"):
        tgi.feed(b"data: " + orjson.dumps({"token": {"id": 1, "text": piece,
                                                     "special": piece == "</s>"}}) + b"\n\n")
    body, ctype, _ = tgi.assembled()
    assert body is not None and ctype == "application/json"
    assert orjson.loads(body)["generated_text"] == "Call +1 212 555 0143"
    anthropic = whole(4096, "text/event-stream")
    for event in ({"type": "message_start", "message": {"model": "claude"}},
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "jane@exa"}},
                  {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": "mple.com"}},
                  {"type": "message_stop"}):
        anthropic.feed(b"event: x\ndata: " + orjson.dumps(event) + b"\n\n")
    body, _, _ = anthropic.assembled()
    assert body is not None
    assert orjson.loads(body)["content"] == [{"type": "text", "text": "jane@example.com"}]


def test_json_events_of_an_unknown_shape_are_omitted_not_recorded_in_pieces(
        strict: PrivacyProfile, analyzer: Analyzer) -> None:
    assembler = whole(4096, "text/event-stream")
    for piece in ("write to jane", "@example", ".com"):
        assembler.feed(b"data: " + orjson.dumps({"out": {"piece": piece}}) + b"\n\n")
    assert assembler.assembled() == (None, None, UNASSEMBLED)
    result = Masker(strict, analyzer, HASH_KEY).mask(
        Captured("id", response_omitted=UNASSEMBLED), Decision(True, "sampled"))
    assert result.omitted == {"response": UNASSEMBLED}
    assert b"jane" not in orjson.dumps(result.record())


def test_a_cut_stream_keeps_complete_lines_and_drops_its_untrusted_tail(
        strict: PrivacyProfile, analyzer: Analyzer) -> None:
    """A stream cut at max_bytes may end inside a value: "card 4111 1111 1111 11" is too
    short to be a card number, and would be recorded as it is."""
    chunks = sse(*[chat_delta(f"word{i} ") for i in range(30)], chat_delta("card 4111"),
                 chat_delta(" 1111"), chat_delta(" 1111 11"), chat_delta("11 thanks"))
    raw = b"".join(chunks)
    cut = raw.index(b"11 thanks")  # inside the last delta's JSON
    assembler = whole(cut, "text/event-stream")
    assembler.feed(raw)
    body, _, omitted = assembler.assembled()
    assert assembler.truncated and body is not None and omitted is None
    content = orjson.loads(body)["choices"][0]["message"]["content"]
    assert content.startswith("word0 word1 ") and "4111" not in content
    assert len("".join(f"word{i} " for i in range(30)) + "card 4111 1111 1111 11") - \
        len(content) >= TAIL_MARGIN
    plain = whole(50, "text/plain")
    plain.feed(b"x" * 20 + b" my card is 4111 1111 1111 1111 thanks")
    text, _, _ = plain.assembled()
    assert text is not None and b"4111" not in text


def test_feeding_is_bounded() -> None:
    assembler = whole(10, "application/json")
    assembler.feed(b"0123456789abcdef")
    assembler.feed(b"more")
    assert assembler.truncated and assembler.assembled()[0] == b"0123456789"



@pytest.mark.parametrize("content_type", ["text/event-stream", "text/plain"])
def test_a_stream_that_broke_off_keeps_no_half_written_tail(content_type: str) -> None:
    # An upstream reset, a timeout or a client gone: the last value may be cut in two,
    # and half an address or card number is what the recognizers miss.
    text = "Sure. Your card on file is 4111 1111 1111 1111 and your mail is jane.doe@exampl"
    broken = StreamAssembler(1 << 20, content_type)
    raw = "".join(f"data: {word}\n\n" for word in text.split(" ")) if \
        content_type == "text/event-stream" else text
    broken.feed(raw.encode())
    assert broken.cut and not broken.truncated
    body, _, _ = broken.assembled()
    assert body is not None and b"jane" not in body and b"exampl" not in body
    broken.complete = True  # the same bytes, as a whole stream: kept as they came
    assert b"jane.doe@exampl" in (broken.assembled()[0] or b"")
