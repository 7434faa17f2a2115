"""What the detectors read from raw bodies: the prompt's text, request parameters and the
upstream's token usage. Runs in the detection worker (and, for enforce-mode signature and
policy checks, on the request path); the text never leaves the process that read it:
only ``detectors.text.prompt_features`` of it goes on the event.

Known request shapes, first match wins: OpenAI chat (``messages[*].content``, a string or
a list of ``{"type": "text", "text": ...}`` parts) and Anthropic (``system`` too), OpenAI
completions (``prompt``), embeddings (``input``), KServe v2 (``inputs[*].data`` strings).
Any other JSON: every string value. Non-JSON bodies: the text itself (UTF-8, replaced).

>>> body = b'{"model": "m", "messages": [{"role": "user", "content": "hi there"}]}'
>>> doc, text = parse_request(body, "application/json")
>>> text, request_params(doc, ("model", "temperature"))
('hi there', {'model': 'm'})
>>> token_usage(b'{"usage": {"prompt_tokens": 9, "completion_tokens": 12}}')
{'input_tokens': 9, 'output_tokens': 12}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson

MAX_PARSE: Final = 4 * 1024**2  # larger bodies: their first MAX_PARSE bytes as text
_SHAPES: Final = ("messages", "prompt", "input", "inputs")


def parse_request(body: bytes | None, content_type: str | None) -> tuple[Any, str]:
    """The body as JSON (None when it is not JSON) and the prompt text in it."""
    if not body:
        return None, ""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    if len(body) <= MAX_PARSE and (ctype.endswith("json") or body[:1] in (b"{", b"[")):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            doc = None
        if doc is not None:
            return doc, prompt_text(doc)
    return None, body[:MAX_PARSE].decode("utf-8", "replace")


def prompt_text(doc: Any) -> str:
    if isinstance(doc, dict):
        parts: list[str] = []
        if "system" in doc:
            parts.extend(_content(doc["system"]))
        for key in _SHAPES:
            if key in doc:
                value = doc[key]
                if key == "messages" and isinstance(value, list):
                    for message in value:
                        if isinstance(message, dict):
                            parts.extend(_content(message.get("content")))
                elif key == "inputs" and isinstance(value, list):
                    for tensor in value:
                        if isinstance(tensor, dict):
                            parts.extend(_texts(tensor.get("data")))
                else:
                    parts.extend(_texts(value))
                return "\n".join(parts)
    return "\n".join(_texts(doc))


def _content(value: Any) -> Iterator[str]:
    """A message's content: a string, or a list of parts of which only the text counts
    (``{"type": "text", "text": ...}``; image URLs, type tags, cache hints do not)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for part in value:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def _texts(value: Any) -> Iterator[str]:
    """Every string in ``value``, depth first; a content part's ``text`` included."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def request_params(doc: Any, names: Iterable[str]) -> dict[str, Any]:
    """The named top-level request parameters that are scalars (for intended-use policy)."""
    if not isinstance(doc, dict):
        return {}
    return {name: doc[name] for name in names
            if name in doc and (doc[name] is None or isinstance(doc[name], str | int | float))}


def parse_response(body: bytes | None) -> Any:
    """A buffered response body as JSON, or None."""
    if not body or len(body) > MAX_PARSE or body[:1] not in (b"{", b"["):
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def token_usage(body: bytes | None) -> dict[str, int]:
    """Token counts the upstream reported (OpenAI ``usage.prompt_tokens`` /
    ``completion_tokens``, Anthropic ``input_tokens`` / ``output_tokens``)."""
    return usage_of(parse_response(body))


def usage_of(doc: Any) -> dict[str, int]:
    """``token_usage`` of an already parsed response."""
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return {}
    out: dict[str, int] = {}
    for name, keys in (("input_tokens", ("prompt_tokens", "input_tokens")),
                       ("output_tokens", ("completion_tokens", "output_tokens"))):
        for key in keys:
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                out[name] = value
                break
    return out
