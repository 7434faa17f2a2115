"""``Masker``: what one event may carry of its request and response, masked (issue 4).

``Masker.mask(captured)`` never raises. Any failure (the analyzer raising, a bug of ours,
memory) drops the payload and the header values from that event, fails closed, records
``failure`` (an exception type name, never its message: messages can quote input) and
calls ``on_failure``, a counter hook. The event itself is still emitted by the caller.

Per event: sampling is decided first (``sampling.decide``); allow-listed headers are
captured on every event (metadata), bodies and the query string only when sampled or an
always-capture rule fires. All strings of the event go to the analyzer in one call. The
result carries entity counts by type, never a value.

Bodies: JSON (by content type, or sniffed when there is none) is reduced to the profile's
``keep`` paths minus ``drop``; text is masked whole when the profile allows text; binary
is never captured. Bodies larger than ``max_parse_bytes`` are not parsed (omitted). How
sections are read and headers chosen is ``sections.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sidecar.privacy import operators
from sidecar.privacy.analyzer import Analyzer
from sidecar.privacy.payload import MARGIN, Collector, Fitter, Slot, Texts, hide_secret_values
from sidecar.privacy.profile import PrivacyProfile
from sidecar.privacy.sampling import Decision, decide
from sidecar.privacy.sections import (
    Headers,
    body_section,
    byte_plan,
    content_encoded,
    query_section,
    recorded_headers,
)
from sidecar.privacy.selection import MISSING, Selector

_HEADER_MAX = 1024  # characters kept of one header value
_WRAPPER = 64  # bytes reserved for the payload object's own keys and brackets
# Text per analyzer call in ``mask_many``: past ~32 KiB (16 sampled chat events) a bigger
# call saves little (bench/privacy.py), and a spaCy model, when used, sees bounded texts.
BATCH_CHARS = 32 * 1024


@dataclass(frozen=True, slots=True)
class Captured:
    """What the request path kept of one inference, raw, in memory only."""

    inference_id: str
    status: int = 0
    flags: frozenset[str] = frozenset()  # "error", "alert", "rejection"
    request_body: bytes | None = None
    request_content_type: str | None = None
    response_body: bytes | None = None
    response_content_type: str | None = None
    response_omitted: str | None = None  # a stream that could not be assembled: why
    response_cut: bool = False  # a stream's copy ends before the stream (bound, break)
    query: str | None = None
    request_headers: Headers | None = None
    response_headers: Headers | None = None


@dataclass(frozen=True, slots=True)
class MaskResult:
    """The privacy part of one event. ``record()`` is what goes into the event."""

    profile: str
    profile_digest: str
    retention_class: str
    payload_captured: bool
    capture_reason: str
    payload: dict[str, Any] | None = None
    headers: dict[str, dict[str, str]] | None = None
    entity_counts: dict[str, int] = field(default_factory=dict)
    truncated: bool = False
    omitted: dict[str, str] = field(default_factory=dict)
    failure: str | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready: ``privacy`` (the policy record), ``payload``, ``headers``."""
        return {
            "privacy": {
                "profile": self.profile, "profile_digest": self.profile_digest,
                "retention_class": self.retention_class,
                "payload_captured": self.payload_captured, "capture_reason": self.capture_reason,
                "entity_counts": self.entity_counts, "truncated": self.truncated,
                "omitted": self.omitted, "failure": self.failure,
            },
            "payload": self.payload,
            "headers": self.headers,
        }


@dataclass(slots=True)
class _Work:
    """One event between ``Masker._prepare`` and ``Masker._finish``."""

    decision: Decision
    texts: Texts
    header_slots: dict[str, dict[str, Slot]]
    omitted: dict[str, str]
    templates: dict[str, Any]
    plan: dict[str, int]
    budget: int
    truncated: bool


def _chunks(works: list[tuple[int, _Work]]) -> Iterator[list[tuple[int, _Work]]]:
    """``works`` cut where their text passes ``BATCH_CHARS``."""
    chunk: list[tuple[int, _Work]] = []
    size = 0
    for item in works:
        chunk.append(item)
        size += sum(len(text) for text in item[1].texts.items)
        if size >= BATCH_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class AnalyzerFailed(RuntimeError):
    """The analyzer raised; ``cause`` is its exception type name."""


class Masker:
    """Masks events under one profile. Build once per profile; ``mask`` is thread-safe."""

    def __init__(self, profile: PrivacyProfile, analyzer: Analyzer, hash_key: bytes, *,
                 on_failure: Callable[[str], None] | None = None,
                 max_parse_bytes: int | None = None) -> None:
        self.profile = profile
        self.analyzer = analyzer
        self._key = hash_key
        self._on_failure = on_failure
        self._request = Selector(profile.request)
        self._response = Selector(profile.response)
        self._max_parse = max_parse_bytes or max(1 << 20, 16 * profile.max_captured_bytes)
        floors = [r.score_threshold for r in profile.entities.values() if r.score_threshold]
        self._floor = min([profile.score_threshold, *floors])

    def decide(self, inference_id: str, status: int = 0,
               flags: Collection[str] = ()) -> Decision:
        p = self.profile
        return decide(inference_id, p.sample_rate, status, flags, rules=p.always_capture,
                      enabled=p.captures_payload)

    def mask(self, captured: Captured, decision: Decision | None = None) -> MaskResult:
        """Never raises: see the module docstring."""
        return self.mask_many([(captured, decision)])[0]

    def mask_many(self, items: Sequence[tuple[Captured, Decision | None]]) -> list[MaskResult]:
        """``mask`` for each item, in order, with one analyzer call per ``BATCH_CHARS`` of
        their text: the analyzer's costs per call (a pass per anchor, a call per
        recognizer) are then shared. Never raises; when a call fails, its events are
        analysed one by one, so only the event that fails loses its payload."""
        results: list[MaskResult | None] = [None] * len(items)
        works: list[tuple[int, _Work]] = []
        for index, (captured, decision) in enumerate(items):
            try:
                if decision is None:
                    decision = self.decide(captured.inference_id, captured.status,
                                           captured.flags)
                works.append((index, self._prepare(captured, decision)))
            except Exception as exc:
                results[index] = self._failed(exc, decision)
        for chunk in _chunks(works):
            try:
                analysed: list[tuple[list[str], Counter[str]]] | None = \
                    self._masked([work.texts for _, work in chunk])
            except Exception:
                analysed = None  # one by one below
            for position, (index, work) in enumerate(chunk):
                try:
                    masked, counts = analysed[position] if analysed is not None \
                        else self._masked([work.texts])[0]
                    results[index] = self._finish(work, masked, counts)
                except Exception as exc:
                    results[index] = self._failed(exc, work.decision)
        # Every item has its result by now; were one missing, the list must still line up
        # with ``items``: a result in the wrong place would be another event's payload.
        return [result if result is not None else self._failed(RuntimeError(), None)
                for result in results]

    def _failed(self, exc: Exception, decision: Decision | None) -> MaskResult:
        """Fail closed: no payload, no header values, the failure recorded and counted."""
        stage = "analyzer_error" if isinstance(exc, AnalyzerFailed) else "masking_error"
        cause = str(exc) if isinstance(exc, AnalyzerFailed) else type(exc).__name__
        try:
            if self._on_failure is not None:
                self._on_failure(stage)
        except Exception:  # a broken counter must not lose the event
            pass
        reason = decision.reason if isinstance(decision, Decision) else "failed"
        return MaskResult(self.profile.name, self.profile.digest,
                          self.profile.retention_class, payload_captured=False,
                          capture_reason=reason, failure=f"{stage}:{cause}")

    def _prepare(self, captured: Captured, decision: Decision) -> _Work:
        """Everything before the analyzer: the strings to analyse, and where they go."""
        texts = Texts()
        header_slots = {"request": self._headers(captured.request_headers, texts),
                        "response": self._headers(captured.response_headers, texts)}
        omitted: dict[str, str] = {}
        sections: dict[str, Any] = {}
        if decision.captured:
            sections = self._sections(captured, omitted)
            for name, value in sections.items():
                if isinstance(value, str):  # a text body: no keys for secret_key to read
                    # only what can be recorded: the cost follows max_captured_bytes, not
                    # the body (a crafted 1 MB of "a=" took seconds); still longer than
                    # any section's cap, so the cut is seen and said (truncated)
                    sections[name], hidden = hide_secret_values(
                        value[:self.profile.max_captured_bytes + MARGIN])
                    texts.secrets += hidden
        budget = max(self.profile.max_captured_bytes - _WRAPPER, 0)
        plan = byte_plan({name: _raw_size(captured, name) for name in sections}, budget)
        collectors = {name: Collector(texts, cap) for name, cap in plan.items()}
        templates = {name: collectors[name].collect(value) for name, value in sections.items()}
        truncated = captured.response_cut or any(
            c.truncated for c in collectors.values()) or any(
            len(texts.items[slot.index]) > _HEADER_MAX
            for slots in header_slots.values() for slot in slots.values())
        return _Work(decision, texts, header_slots, omitted, templates, plan, budget,
                     truncated)

    def _finish(self, work: _Work, masked: list[str], counts: Counter[str]) -> MaskResult:
        """Everything after the analyzer: the masked strings back in place, within budget."""
        p = self.profile
        payload: dict[str, Any] | None = None
        truncated = work.truncated
        if work.decision.captured:
            payload = {}
            remaining = work.budget
            for name, template in work.templates.items():
                cap = remaining if name == "response" else min(work.plan[name], remaining)
                fitter = Fitter(work.texts, masked, cap)
                fitted = fitter.fit(template)
                remaining -= cap - fitter.remaining
                truncated = truncated or fitter.truncated
                if fitted is not MISSING:
                    payload[name] = fitted
        headers = {side: {name: masked[slot.index][:_HEADER_MAX] for name, slot in slots.items()}
                   for side, slots in work.header_slots.items() if slots}
        if work.texts.secrets:
            counts["SECRET"] += work.texts.secrets
        return MaskResult(p.name, p.digest, p.retention_class,
                          payload_captured=work.decision.captured,
                          capture_reason=work.decision.reason, payload=payload,
                          headers=headers or None, entity_counts=dict(sorted(counts.items())),
                          truncated=truncated, omitted=work.omitted)

    def _masked(self, batch: Sequence[Texts]) -> list[tuple[list[str], Counter[str]]]:
        """Each event's strings masked, and its entity counts: one analyzer call."""
        if not self.profile.entities:
            return [(list(texts.items), Counter()) for texts in batch]
        flat = [text for texts in batch for text in texts.items]
        try:
            findings = self.analyzer.analyze(flat, self.profile.entities, self._floor) \
                if flat else []
        except Exception as exc:
            raise AnalyzerFailed(type(exc).__name__) from exc
        out: list[tuple[list[str], Counter[str]]] = []
        start = 0
        for texts in batch:
            counts: Counter[str] = Counter()
            end = start + len(texts.items)
            out.append(([operators.apply(text, found, self.profile, self._key, counts, limit)
                         for text, found, limit in zip(texts.items, findings[start:end],
                                                       texts.limits, strict=True)], counts))
            start = end
        return out

    def _headers(self, headers: Headers | None, texts: Texts) -> dict[str, Slot]:
        return {name: texts.add(value[:_HEADER_MAX + MARGIN], limit=_HEADER_MAX)
                for name, value in recorded_headers(self.profile, headers)}

    def _sections(self, captured: Captured, omitted: dict[str, str]) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        if self.profile.query_capture and captured.query:
            sections["query"] = query_section(captured.query)
        for name, body, ctype, selector, headers in (
                ("request", captured.request_body, captured.request_content_type, self._request,
                 captured.request_headers),
                ("response", captured.response_body, captured.response_content_type,
                 self._response, captured.response_headers)):
            if name == "response" and captured.response_omitted:
                omitted[name] = captured.response_omitted
                continue
            if body and content_encoded(headers):
                # Compressed bytes read as text are garbage no recognizer can vouch for
                # (a stored deflate block even keeps text whole between its headers).
                omitted[name] = "content_encoded"
                continue
            value, why = body_section(body, ctype, selector, self._max_parse)
            if why is not None:
                omitted[name] = why
            elif value is not MISSING:
                sections[name] = value
        return sections


def _raw_size(captured: Captured, section: str) -> int:
    raw = {"query": captured.query, "request": captured.request_body,
           "response": captured.response_body}[section]
    return len(raw or "")
