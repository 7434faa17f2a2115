"""A stream's output, assembled for its event only (issue 4).

The relay hands every chunk it has already written to the client to ``feed``: a bounded
copy into a buffer, nothing parsed, no await, so the live stream is never delayed or
altered. When the stream ends, ``assembled()`` (in the pipeline, off the event loop)
turns the stream into one text the recognizers can read whole: a value the model wrote
over several tokens ("jane", "@exam", "ple.com") is only found once its pieces are
joined again.

- Server-Sent Events of a known token format become the shape of the non-streamed
  response, so a profile's response paths apply to streams unchanged: OpenAI chat and
  completions (``$.choices[*].message.content``, ``$.choices[*].text``), Hugging Face TGI
  (``$.generated_text``), Anthropic messages (``$.content[*].text``).
- Other events whose data is plain text are joined into one text (a JSON string, as
  ``data: "jane"``, by its value).
- Events of JSON in an unknown shape cannot be joined safely: their payload is omitted
  (``stream_unassembled``), never recorded as the raw pieces.
- Newline-delimited JSON (``application/x-ndjson``, or a non-SSE, non-JSON stream of
  several lines, all JSON objects): Ollama's ``/api/generate`` and ``/api/chat`` lines become the
  non-streamed answer (``$.response``, ``$.message.content``), and OpenAI or TGI lines
  as their SSE events do; other shapes are omitted as above.
- Any other non-SSE stream is returned as it came (the masker judges it by its content
  type).

Cut streams (past ``max_bytes``): only complete lines are read, and the last
``TAIL_MARGIN`` characters of each assembled text are dropped back to a word boundary:
a value the cut went through would otherwise be recorded in part, too short to be
recognised. Only content/text deltas, roles and finish reasons are assembled; tool-call
argument deltas are not (they are dropped, never recorded unmasked).
"""

from __future__ import annotations

from typing import Any

import orjson

TAIL_MARGIN = 64
_NDJSON = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines"})
UNASSEMBLED = "stream_unassembled"


class StreamAssembler:
    """Collects up to ``max_bytes`` of a streamed body."""

    def __init__(self, max_bytes: int, content_type: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.content_type = content_type
        self.truncated = False  # cut at max_bytes
        self.complete = False  # the upstream's whole stream went through (set by the relay)
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Keep a copy of ``chunk`` (as far as the bound allows). O(len(chunk)), no parsing."""
        room = self.max_bytes - len(self._buffer)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        self._buffer += chunk

    @property
    def cut(self) -> bool:
        """The copy ends before the stream did: at the bound, or where the stream broke
        off (upstream reset, timeout, client gone). Its last value may be half written,
        and half a value is what the recognizers miss: the tail is not trusted."""
        return self.truncated or not self.complete

    def assembled(self) -> tuple[bytes | None, str | None, str | None]:
        """The body to mask, its content type, and why there is none (or None)."""
        media = (self.content_type or "").split(";", 1)[0].strip().lower()
        raw = bytes(self._buffer)
        cut = self.cut
        if media != "text/event-stream":
            lines = _json_lines(raw[:raw.rfind(b"\n") + 1] if cut else raw)
            # A JSON body (one document, perhaps large) is not a stream of lines
            if lines is not None and (media in _NDJSON or (
                    len(lines) > 1 and not media.endswith(("/json", "+json")))):
                return self._merged(lines)
            if cut and not media.endswith(("/json", "+json")):
                # Text (NDJSON, plain): its tail is untrusted. Cut JSON fails to parse.
                text = _trusted(raw.decode("utf-8", "replace"))
                return text.encode(), self.content_type, None
            return raw, self.content_type, None
        if cut:
            raw = raw[:raw.rfind(b"\n") + 1]  # complete lines only
        events = _events(raw)
        if not events:
            return None, None, None
        parsed = [_structured(data) for data in events]
        if all(chunk is not None for chunk in parsed):
            return self._merged(parsed)
        if any(chunk is not None for chunk in parsed):
            return None, None, UNASSEMBLED  # JSON of a shape we cannot join
        text = "".join(_text(data) for data in events)
        if cut:
            text = _trusted(text)
        return text.encode(), "text/plain; charset=utf-8", None

    def _merged(self, chunks: list[Any]) -> tuple[bytes | None, str | None, str | None]:
        """JSON chunks of a known token format as the non-streamed answer, else omitted."""
        for merge in (_openai, _tgi, _anthropic, _ollama):
            merged = merge(chunks)
            if merged is not None:
                if self.cut:
                    _trust_texts(merged)
                return orjson.dumps(merged), "application/json", None
        return None, None, UNASSEMBLED


def _text(data: bytes) -> str:
    """An event's data as text: a JSON string by its value (``"jane"`` is ``jane``)."""
    if data[:1] == b'"':
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(value, str):
                return value
    return data.decode("utf-8", "replace")


def _json_lines(raw: bytes) -> list[Any] | None:
    """Each non-empty line's JSON object, if there are any and every line is one."""
    out = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        if line.lstrip()[:1] != b"{":
            return None
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            return None
    return out or None


def _structured(data: bytes) -> Any:
    """The JSON object or array ``data`` holds, else None (a plain-text token, even one
    such as ``42`` that is valid JSON)."""
    if data[:1] not in (b"{", b"["):
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _events(raw: bytes) -> list[bytes]:
    """The data of each event (its ``data:`` lines joined by a line feed, as the SSE
    standard says), without the ``[DONE]`` sentinel."""
    events: list[bytes] = []
    lines: list[bytes] = []
    for line in [*raw.splitlines(), b""]:
        if not line:
            if lines:
                data = b"\n".join(lines)
                if data.strip() != b"[DONE]":
                    events.append(data)
                lines = []
        elif line.startswith(b"data:"):
            value = line[5:]
            lines.append(value[1:] if value.startswith(b" ") else value)
    return events


def _trusted(text: str) -> str:
    """``text`` without its last ``TAIL_MARGIN`` characters, cut back to white space."""
    end = len(text) - TAIL_MARGIN
    if end <= 0:
        return ""
    space = max(text.rfind(c, 0, end) for c in " \n\t")
    return text[:space + 1] if space >= 0 else ""


def _trust_texts(value: Any) -> None:
    """Apply ``_trusted`` to every assembled text of a merged response, in place."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key in ("content", "text", "generated_text", "response") \
                    and isinstance(child, str):
                value[key] = _trusted(child)
            else:
                _trust_texts(child)
    elif isinstance(value, list):
        for child in value:
            _trust_texts(child)


def _openai(chunks: list[Any]) -> dict[str, Any] | None:
    """OpenAI chat/completions chunks merged into one response, or None if they are not."""
    choices: dict[int, dict[str, Any]] = {}
    model: str | None = None
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
            return None
        if isinstance(chunk.get("model"), str):
            model = chunk["model"]
        for choice in chunk["choices"]:
            if not isinstance(choice, dict):
                return None
            index = choice.get("index", 0)
            merged = choices.setdefault(index if isinstance(index, int) else 0,
                                        {"content": [], "text": [], "role": None,
                                         "finish_reason": None})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if isinstance(delta.get("content"), str):
                    merged["content"].append(delta["content"])
                if isinstance(delta.get("role"), str):
                    merged["role"] = delta["role"]
            if isinstance(choice.get("text"), str):
                merged["text"].append(choice["text"])
            if choice.get("finish_reason") is not None:
                merged["finish_reason"] = choice["finish_reason"]
    if not choices:
        return None
    out: list[dict[str, Any]] = []
    for index in sorted(choices):
        merged = choices[index]
        entry: dict[str, Any] = {"index": index, "finish_reason": merged["finish_reason"]}
        if merged["content"] or merged["role"]:
            entry["message"] = {"role": merged["role"] or "assistant",
                                "content": "".join(merged["content"])}
        if merged["text"]:
            entry["text"] = "".join(merged["text"])
        out.append(entry)
    return {"model": model, "choices": out, "stream": True}


def _tgi(chunks: list[Any]) -> dict[str, Any] | None:
    """Hugging Face TGI ``/generate_stream`` tokens joined, as ``/generate`` answers."""
    pieces: list[str] = []
    for chunk in chunks:
        token = chunk.get("token") if isinstance(chunk, dict) else None
        if not isinstance(token, dict) or not isinstance(token.get("text"), str):
            return None
        if not token.get("special"):
            pieces.append(token["text"])
    return {"generated_text": "".join(pieces), "stream": True} if pieces else None


def _anthropic(chunks: list[Any]) -> dict[str, Any] | None:
    """Anthropic messages events: the text deltas of each content block joined."""
    blocks: dict[int, list[str]] = {}
    model: str | None = None
    for chunk in chunks:
        if not isinstance(chunk, dict) or not isinstance(chunk.get("type"), str):
            return None
        message = chunk.get("message")
        if isinstance(message, dict) and isinstance(message.get("model"), str):
            model = message["model"]
        delta = chunk.get("delta")
        if chunk["type"] == "content_block_delta" and isinstance(delta, dict) \
                and isinstance(delta.get("text"), str):
            index = chunk.get("index", 0)
            blocks.setdefault(index if isinstance(index, int) else 0, []).append(delta["text"])
    if not any(isinstance(c, dict) and c.get("type") == "message_start" for c in chunks) \
            and not blocks:
        return None
    return {"model": model, "content": [{"type": "text", "text": "".join(blocks[i])}
                                        for i in sorted(blocks)], "stream": True}


def _ollama(chunks: list[Any]) -> dict[str, Any] | None:
    """Ollama ``/api/generate`` (``response``) or ``/api/chat`` (``message.content``)
    lines joined, as the non-streamed answer."""
    pieces: list[str] = []
    chat = None
    model: str | None = None
    for chunk in chunks:
        if not isinstance(chunk, dict):
            return None
        if isinstance(chunk.get("model"), str):
            model = chunk["model"]
        message = chunk.get("message")
        if isinstance(chunk.get("response"), str) and chat is not True:
            chat = False
            pieces.append(chunk["response"])
        elif isinstance(message, dict) and isinstance(message.get("content"), str) \
                and chat is not False:
            chat = True
            pieces.append(message["content"])
        elif not chunk.get("done"):
            return None  # neither shape, and not the final line of counts
    if chat is None:
        return None
    if chat:
        return {"model": model, "message": {"role": "assistant", "content": "".join(pieces)},
                "stream": True}
    return {"model": model, "response": "".join(pieces), "stream": True}
