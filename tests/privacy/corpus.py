"""A generated corpus of chat traffic with labelled personal data and secrets (issue 4).

``build_corpus(n, seed)`` is deterministic: the same seed gives the same samples. Each
``Sample`` is one inference as the request path would capture it (bodies, query string,
headers) plus ``labels``: every planted value, its entity type and where it was put
(``request``, ``response``, ``query``, ``header:<name>``). Every pattern entity type of
``pii.GENERATORS`` is planted, in every place, many times over.

Shapes: OpenAI chat (70%), OpenAI completions (10%), KServe v2 with BYTES tensors (12%),
plain-text bodies (8%). Filler text has no digits, so any digit run left in a masked
event can be traced to a planted value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlencode

import orjson
from pii_values import GENERATORS, pick

from sidecar.privacy.masker import Captured

FILLER = [
    "Could you help me draft a short note to my landlord about the broken heating?",
    "Summarise the following message in plain words for a customer support ticket.",
    "I need to update the details on my account before the end of the week.",
    "The quick brown fox jumps over the lazy dog while the model thinks about it.",
    "Please check whether this information is correct and tell me what is missing.",
    "Thanks a lot, that was really useful; one more question about my contract though.",
]
TEMPLATES = [
    "My {label} is {value}.", "You can reach me at {value} if needed.",
    "Use {value} for the transfer.", "For reference: {value}.",
    "Here it is -> {value} <- please keep it safe.", "({value})", "{value}",
]
LABELS = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "CREDIT_CARD": "card number",
          "IBAN_CODE": "IBAN", "IP_ADDRESS": "server address", "US_SSN": "social security number",
          "API_KEY": "API key", "AWS_ACCESS_KEY_ID": "AWS key", "JWT": "session token"}
QUERY_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "API_KEY", "US_SSN"]


@dataclass
class Sample:
    """One labelled inference: what was captured and what was planted where."""

    captured: Captured
    labels: list[tuple[str, str, str]] = field(default_factory=list)  # (entity, value, where)


class _Planter:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.labels: list[tuple[str, str, str]] = []
        self.types = sorted(GENERATORS)

    def value(self, entity: str, where: str) -> str:
        value = GENERATORS[entity](self.rng)
        self.labels.append((entity, value, where))
        return value

    def sentence(self, where: str, entity: str | None = None) -> str:
        entity = entity or self.rng.choice(self.types)
        if entity == "BEARER_TOKEN":
            return f"Authorization: Bearer {self.value(entity, where)}"
        template = self.rng.choice(TEMPLATES)
        value = self.value(entity, where)
        return template.format(label=LABELS.get(entity, "number"), value=value)

    def text(self, where: str, n: int) -> str:
        parts = [self.rng.choice(FILLER)]
        for _ in range(n):
            parts.append(self.sentence(where))
            if self.rng.random() < 0.5:
                parts.append(self.rng.choice(FILLER))
        return " ".join(parts)


def _sample(index: int, rng: random.Random) -> Sample:
    plant = _Planter(rng)
    shape = rng.choices(["chat", "completion", "kserve", "text"], [70, 10, 12, 8])[0]
    user_text = plant.text("request", rng.randint(1, 4))
    answer = plant.text("response", rng.randint(0, 2))
    if plant.labels and rng.random() < 0.3:  # the model repeats something it was told
        entity, value, _ = rng.choice(plant.labels)
        answer += f" I noted {value}."
        plant.labels.append((entity, value, "response"))
    request: object
    response: object
    ctype_req = ctype_resp = "application/json"
    if shape == "chat":
        messages = [{"role": "user", "content": user_text}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Escalate to " +
                                plant.sentence("request", "EMAIL_ADDRESS")})
        request = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0.2}
        response = {"id": f"chatcmpl-{pick(rng, 'abcdefghij', 12)}", "object": "chat.completion",
                    "model": "gpt-4o-mini",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer}}]}
    elif shape == "completion":
        request = {"model": "text-model", "prompt": user_text, "max_tokens": 64}
        response = {"choices": [{"index": 0, "text": answer, "finish_reason": "length"}]}
    elif shape == "kserve":
        request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                               "data": [user_text]}]}
        response = {"model_name": "clf", "outputs": [{"name": "label", "datatype": "BYTES",
                                                      "shape": [1], "data": [answer]}]}
    else:
        request, response = user_text, answer
        ctype_req = ctype_resp = "text/plain; charset=utf-8"
    query = None
    if rng.random() < 0.35:
        entity = rng.choice(QUERY_ENTITIES)
        query = urlencode({"user": plant.value(entity, "query"), "trace": "on"})
    headers = [("Content-Type", ctype_req), ("Accept", "application/json"),
               ("Authorization", f"Bearer {plant.value('API_KEY', 'header:authorization')}"),
               ("X-Forwarded-For", plant.value("IP_ADDRESS", "header:x-forwarded-for"))]
    if rng.random() < 0.5:
        headers.append(("User-Agent", "acme-bot (contact " +
                        plant.value("EMAIL_ADDRESS", "header:user-agent") + ")"))
    if rng.random() < 0.5:
        headers.append(("Cookie", f"session={plant.value('JWT', 'header:cookie')}"))
    if rng.random() < 0.5:
        headers.append(("X-Api-Key", plant.value("AWS_ACCESS_KEY_ID", "header:x-api-key")))

    def encode(body: object) -> bytes:
        return body.encode() if isinstance(body, str) else orjson.dumps(body)

    captured = Captured(
        inference_id=f"0190a1b2-{index:04x}-7000-8000-{rng.getrandbits(48):012x}",
        status=200, request_body=encode(request), request_content_type=ctype_req,
        response_body=encode(response), response_content_type=ctype_resp, query=query,
        request_headers=headers, response_headers=[("Content-Type", ctype_resp)])
    return Sample(captured, plant.labels)


# How numbers get written outside ASCII, as ``str.translate`` tables: full-width and
# Arabic-Indic digits, the no-break space (French phone numbers), a non-breaking hyphen,
# the prolonged sound mark (Japanese: 03\u30fc1234\u30fc5678).
WRITINGS: dict[str, dict[int, str]] = {
    "full-width digits": {ord(d): chr(0xFF10 + int(d)) for d in "0123456789"},
    "arabic-indic digits": {ord(d): chr(0x0660 + int(d)) for d in "0123456789"},
    "no-break spaces": {ord(" "): "\u00a0"},
    "unicode hyphens": {ord("-"): "\u2011"},
    "prolonged sound marks": {ord("-"): "\u30fc"},
}


def written(sample: Sample, writing: dict[int, str]) -> Sample:
    """``sample`` with its text, planted values included, written as ``writing`` says."""
    captured = sample.captured

    def body(raw: bytes | None) -> bytes | None:
        return None if raw is None else raw.decode().translate(writing).encode()

    def headers(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        return None if pairs is None else [(n, v.translate(writing)) for n, v in pairs]

    query = None if captured.query is None else urlencode(
        [(k, v.translate(writing)) for k, v in parse_qsl(captured.query, keep_blank_values=True)])
    return Sample(replace(captured, request_body=body(captured.request_body),
                          response_body=body(captured.response_body), query=query,
                          request_headers=headers(captured.request_headers),  # type: ignore[arg-type]
                          response_headers=headers(captured.response_headers)),  # type: ignore[arg-type]
                  [(e, v.translate(writing), w) for e, v, w in sample.labels])


def build_corpus(n: int = 1200, seed: int = 4) -> list[Sample]:
    """``n`` labelled samples, the same for the same seed."""
    rng = random.Random(seed)
    return [_sample(i, rng) for i in range(n)]
