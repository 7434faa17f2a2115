"""A stream's output, assembled for its event only (issue 4).

The relay hands every chunk it has already written to the client to ``feed``: a bounded
copy into a buffer, nothing parsed, no await, so the live stream is never delayed or
altered. When the stream ends, ``assembled()`` (in the pipeline, off the event loop)
turns Server-Sent Events from OpenAI-style servers into the shape of the non-streamed
response, so a profile's response paths (``$.choices[*].message.content``,
``$.choices[*].text``) apply to streams unchanged; any other SSE becomes the text of its
``data:`` lines; a non-SSE stream is returned as it came (the masker judges it).

Only ``content``/``text`` deltas, roles and finish reasons are assembled; tool-call
argument deltas are not (they are dropped, never recorded unmasked).
"""

from __future__ import annotations

from typing import Any

import orjson


class StreamAssembler:
    """Collects up to ``max_bytes`` of a streamed body."""

    def __init__(self, max_bytes: int, content_type: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.content_type = content_type
        self.truncated = False
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Keep a copy of ``chunk`` (as far as the bound allows). O(len(chunk)), no parsing."""
        room = self.max_bytes - len(self._buffer)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[:max(room, 0)]
        self._buffer += chunk

    def assembled(self) -> tuple[bytes, str | None]:
        """The body to mask and its content type."""
        media = (self.content_type or "").split(";", 1)[0].strip().lower()
        if media != "text/event-stream":
            return bytes(self._buffer), self.content_type
        data = [line[5:].strip() for line in bytes(self._buffer).splitlines()
                if line.startswith(b"data:")]
        data = [d for d in data if d and d != b"[DONE]"]
        merged = _openai(data)
        if merged is not None:
            return orjson.dumps(merged), "application/json"
        return b"\n".join(data), "text/plain; charset=utf-8"


def _openai(data: list[bytes]) -> dict[str, Any] | None:
    """OpenAI chat/completions chunks merged into one response, or None if they are not."""
    choices: dict[int, dict[str, Any]] = {}
    model: str | None = None
    for item in data:
        try:
            chunk = orjson.loads(item)
        except orjson.JSONDecodeError:
            return None
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
