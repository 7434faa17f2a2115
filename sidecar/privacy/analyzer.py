"""One presidio ``AnalyzerEngine`` for the process, built offline (issue 4).

Built once at start-up (it costs ~0.1 s and a few MB) and shared by every masker; call
``Analyzer.analyze`` from the pipeline's thread, never on the event loop: it is CPU-bound
regex work (~0.1-1 ms per KB of text) and holds the GIL.

No network, no model download, ever:

- the NLP engine is presidio's ``NoOpNlpEngine`` (no spaCy model), unless the profile names
  a spaCy model (``ner_model``) that is already installed (a package spaCy can load, or a
  pipeline directory). We check with the same test presidio uses before it would call
  ``spacy.cli.download``, so that call is unreachable; a missing model leaves the NER
  entities (PERSON, LOCATION ...) listed in ``Analyzer.inactive`` and logged once.
  Optional extra, for PERSON/LOCATION: install a spaCy model package into the same
  environment (``en_core_web_sm`` or larger, from your mirror) and set ``ner_model``.
- e-mail validation uses tldextract's bundled suffix list (``recognizers.py``).

Two configurations, compared by ``bench/privacy.py``:

- ``tuned=True`` (what the sidecar runs): only the recognizers the profiles name, run by
  ``prefilter.Scanner`` instead of presidio's engine: one cheap pass per family of
  recognizers (digits, ``@``, IP characters, key-like runs) cuts the candidate windows,
  each recognizer scans only its family's windows (exactly: see ``prefilter.py``), and
  the results are filtered and de-duplicated as the engine would; no context-word
  enhancement (it needs spaCy lemmas, which the no-op engine does not make); patterns
  compiled at build time; all strings of one event analysed in one pass, joined by a
  separator no pattern crosses; texts without any anchor skip those recognizers. NER
  recognizers (with a spaCy model) still run through the engine.
- ``tuned=False``: presidio's default registry and context enhancer, one ``analyze`` call
  per string, plus (for equal coverage) the recognizers the profile needs that presidio's
  English registry lacks. Still offline: the e-mail recognizer is swapped for ours.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import presidio_analyzer.predefined_recognizers as presidio_recognizers
import spacy.util
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    PatternRecognizer,
    RecognizerRegistry,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine, NoOpNlpEngine, SpacyNlpEngine
from presidio_analyzer.recognizer_result import RecognizerResult

from sidecar.privacy import recognizers as ours
from sidecar.privacy import windowing
from sidecar.privacy.cache import DigestCache
from sidecar.privacy.entities import CUSTOM_ENTITIES, NER_ENTITIES, PRESIDIO_PATTERN_ENTITIES
from sidecar.privacy.fold import to_text, view
from sidecar.privacy.prefilter import Cut, Radius, Scanner, Token, Whole, max_width, no_space
from sidecar.privacy.profile import PrivacyProfile

log = logging.getLogger("inference_sidecar.privacy")

LANGUAGE = "en"
SEPARATOR = "\n\x00\n"  # NUL is in none of the recognizers' character classes; see _split
_WARM_UP = ("warm-up a@example.com +1 212 555 0143 10.0.0.1 fe80::1 4111 1111 1111 1111 "
            "Bearer abcdefghijklmnop sk-abcdefghijklmnopqrstuvwx")
# Not anchored on digits: a match may contain none (IPv6 "::", omocodic fiscal codes, MACs).
# With the shortest anchor match when it is long (see ``prefilter.Token``).
_ANCHORS = {"IP_ADDRESS": ("ip", windowing.IP_CHARS, 1),
            "IT_FISCAL_CODE": ("alnum16", windowing.ALNUM_16, 16),
            "EMAIL_ADDRESS": ("at", windowing.AT_SIGN, 1),
            "API_KEY": ("keyrun", windowing.KEY_RUN, 20)}
_UNANCHORED = frozenset({"MAC_ADDRESS", "URL", "AWS_ACCESS_KEY_ID", "JWT", "BEARER_TOKEN"})
_MARGIN = 8  # characters of look-around context each side of a radius window


@dataclass(frozen=True, slots=True)
class Finding:
    """One detected entity in one input string: its type, span and presidio score."""

    entity_type: str
    start: int
    end: int
    score: float


class _NoContext(ContextAwareEnhancer):
    """Context-word score boosting switched off (tuned): no lemmas without spaCy anyway."""

    def __init__(self) -> None:
        super().__init__(context_similarity_factor=0.0, min_score_with_context_similarity=0.0,
                         context_prefix_count=0, context_suffix_count=0)

    def enhance_using_context(self, text: str, raw_results: list[RecognizerResult],
                              nlp_artifacts: NlpArtifacts, recognizers: list[EntityRecognizer],
                              context: list[str] | None = None) -> list[RecognizerResult]:
        return raw_results


class Analyzer:
    """Detects entities in batches of strings. Thread-safe after construction (warm)."""

    def __init__(self, engine: AnalyzerEngine, entities: frozenset[str],
                 inactive: frozenset[str], tuned: bool, cache_size: int = 8192,
                 scanner: Scanner | None = None, ner: frozenset[str] = frozenset()) -> None:
        self.engine = engine  # tuned: holds the NER recognizer only (when a model is used)
        self.entities = entities  # detectable: requested and available
        self.inactive = inactive  # requested, never detected: no spaCy model, or too weak
        self.tuned = tuned
        self.scanner = scanner if tuned else None
        self._ner = ner  # tuned: entities left to the engine (its spaCy recognizer)
        self.cache: DigestCache[list[Finding]] | None = \
            DigestCache(cache_size) if tuned and cache_size > 0 else None

    def analyze(self, texts: Sequence[str], entities: Collection[str],
                score_threshold: float) -> list[list[Finding]]:
        """Findings per input string (same order), at or above ``score_threshold``.

        Raises whatever presidio raises: callers (the masker) fail closed on it.
        """
        wanted = sorted(self.entities.intersection(entities))
        if not wanted or not any(texts):
            return [[] for _ in texts]
        if not self.tuned:
            return [self._findings(text, wanted, score_threshold) if text else []
                    for text in texts]
        if self.cache is None:
            return self._joined(texts, wanted, score_threshold)
        per_text: list[list[Finding] | None] = []
        keys = []
        for text in texts:
            key = self.cache.key(text, tuple(wanted), score_threshold)
            keys.append(key)
            per_text.append(self.cache.get(key) if text else [])
        missing = [i for i, found in enumerate(per_text) if found is None]
        if missing:
            fresh = self._joined([texts[i] for i in missing], wanted, score_threshold)
            for i, found in zip(missing, fresh, strict=True):
                per_text[i] = found
                self.cache.put(keys[i], found)
        return [found or [] for found in per_text]

    def _joined(self, texts: Sequence[str], entities: list[str],
                threshold: float) -> list[list[Finding]]:
        """One engine call for all ``texts``, joined by ``SEPARATOR``."""
        starts: list[int] = []
        position = 0
        for text in texts:
            starts.append(position)
            position += len(text) + len(SEPARATOR)
        found = self._findings(SEPARATOR.join(texts), entities, threshold)
        return _split(found, texts, starts)

    def _findings(self, text: str, entities: list[str], threshold: float) -> list[Finding]:
        if self.scanner is None:
            results = self.engine.analyze(text=text, language=LANGUAGE, entities=entities,
                                          score_threshold=threshold)
        else:
            seen, where = view(text)  # offsets mapped back when it took characters out
            scanned = self.scanner.scan(seen, entities)
            results = [r for r in scanned if r.score >= threshold]
            if where is not None:
                for r in results:
                    r.start, r.end = to_text(where, r.start, r.end)
            ner = [e for e in entities if e in self._ner]
            if ner:
                results += self.engine.analyze(text=text, language=LANGUAGE, entities=ner,
                                               score_threshold=threshold)
            if results:  # as the engine: threshold first, then presidio's de-duplication
                results = EntityRecognizer.remove_duplicates(results)
        return [Finding(r.entity_type, r.start, r.end, r.score) for r in results]


def _split(found: list[Finding], texts: Sequence[str], starts: list[int]) -> list[list[Finding]]:
    """Map findings in the joined text back to each string; a finding that straddles a
    separator (it cannot, by construction, but fail closed) masks both sides."""
    per_text: list[list[Finding]] = [[] for _ in texts]
    for f in found:
        index = bisect.bisect_right(starts, f.start) - 1
        while index < len(texts) and starts[index] < f.end:
            begin = max(f.start - starts[index], 0)
            end = min(f.end - starts[index], len(texts[index]))
            if begin < end:
                per_text[index].append(Finding(f.entity_type, begin, end, f.score))
            index += 1
    return per_text


def ner_model_available(model: str) -> bool:
    """The test presidio makes before downloading: an installed package or a directory."""
    return bool(spacy.util.is_package(model)) or Path(model).exists()


def _pattern_recognizer(entity: str, tuned: bool, threshold: float) -> EntityRecognizer | None:
    """The recognizer for ``entity``; None when (tuned) it can never reach ``threshold``.
    Tuned: the bare recognizer, which ``_cut`` then places in the scanner."""
    recognizer: EntityRecognizer
    if entity == "EMAIL_ADDRESS":
        recognizer = ours.OfflineEmailRecognizer()
    elif entity == "PHONE_NUMBER" and tuned:
        recognizer = ours.FastPhoneRecognizer()
    elif entity == "IBAN_CODE" and tuned:
        recognizer = ours.AnyCaseIbanRecognizer()
    else:
        cls = getattr(presidio_recognizers, PRESIDIO_PATTERN_ENTITIES[entity])
        recognizer = cls(supported_language=LANGUAGE)
    if not tuned:
        return recognizer
    if not _prune(recognizer, threshold):
        return None
    return recognizer


def _cut(entity: str, recognizer: EntityRecognizer, cuts: dict[str, Cut]) -> Cut:
    """Where the tuned scanner runs ``recognizer`` (see ``prefilter.py``): the tokens
    holding its anchor when its patterns cannot match white space; else windows around
    its anchor wide enough for its longest match; the whole text when it has no anchor."""
    cut: Cut
    if entity in _UNANCHORED:
        cut = Whole()
    elif entity == "PHONE_NUMBER":
        cut = Radius(windowing.PHONE_DIGITS, windowing.PHONE_RADIUS + _MARGIN, "phone")
    else:
        name, anchor, shortest = _ANCHORS.get(entity, ("digit", windowing.DIGITS, 1))
        if name != "digit" and no_space(recognizer):
            cut = Token(anchor, name, shortest)
        else:
            width = max_width(recognizer)
            radius = windowing.RADIUS if width > windowing.RADIUS else width
            cut = Radius(anchor, -(-(radius + _MARGIN) // 16) * 16, name)  # shared buckets
    return cuts.setdefault(cut.key, cut)


def _prune(recognizer: EntityRecognizer, threshold: float) -> bool:
    """Drop patterns whose score can never reach ``threshold``: with context boosting off,
    only a recognizer's own ``validate_result`` can raise a pattern's score (to 1.0), so
    the patterns of recognizers that do not override it are final. False when none is
    left (e.g. US_PASSPORT, whose patterns score 0.05 and 0.1 without context words)."""
    if isinstance(recognizer, PatternRecognizer) and \
            type(recognizer).validate_result is PatternRecognizer.validate_result:
        state = vars(recognizer)  # presidio leaves ``patterns`` unannotated
        state["patterns"] = [p for p in state["patterns"] if p.score >= threshold]
        return bool(state["patterns"])
    return True


def _floor(profiles: Sequence[PrivacyProfile], entity: str) -> float:
    """The lowest score any of the profiles accepts for ``entity``."""
    floors = [p.score_threshold if (rule := p.rule(entity)) is None or rule.score_threshold is None
              else min(rule.score_threshold, p.score_threshold) for p in profiles]
    return min(floors, default=0.0)


def _nlp_engine(model: str | None) -> NlpEngine:
    if model is None:
        engine: NlpEngine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
    else:
        engine = SpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": model}])
    engine.load()
    return engine


def build_analyzer(profiles: PrivacyProfile | Iterable[PrivacyProfile], *,
                   tuned: bool = True, cache_size: int = 8192) -> Analyzer:
    """Build the process's analyzer for every entity the given profiles name.

    Pass every profile in use (``ProfileSelector.profiles``) so one engine serves them
    all. The first profile naming a ``ner_model`` decides the spaCy model. ``cache_size``:
    strings whose findings are remembered (tuned only; 0 turns the cache off).
    """
    chosen = [profiles] if isinstance(profiles, PrivacyProfile) else list(profiles)
    requested = frozenset(e for p in chosen for e in p.entities)
    models = [p.ner_model for p in chosen if p.ner_model]
    model = models[0] if models and ner_model_available(models[0]) else None
    wanted_ner = requested & NER_ENTITIES - set(PRESIDIO_PATTERN_ENTITIES)
    inactive = wanted_ner if model is None else frozenset()
    if inactive:
        log.warning("privacy: NER entities inactive, no spaCy model installed",
                    extra={"fields": {"entities": sorted(inactive),
                                      "ner_model": models[0] if models else None}})
    nlp = _nlp_engine(model)
    scanner = Scanner() if tuned else None
    cuts: dict[str, Cut] = {}
    if tuned:
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        enhancer: ContextAwareEnhancer | None = _NoContext()
    else:
        registry = RecognizerRegistry(supported_languages=[LANGUAGE])
        registry.load_predefined_recognizers(languages=[LANGUAGE], nlp_engine=nlp)
        registry.remove_recognizer("EmailRecognizer")
        enhancer = None
    present = {e for r in registry.recognizers for e in r.supported_entities}
    too_weak = set()
    for entity in sorted(requested & frozenset(PRESIDIO_PATTERN_ENTITIES)):
        if tuned or entity not in present or entity == "EMAIL_ADDRESS":
            recognizer = _pattern_recognizer(entity, tuned, _floor(chosen, entity))
            if recognizer is None:
                too_weak.add(entity)
            elif scanner is not None:
                scanner.add(recognizer, _cut(entity, recognizer, cuts))
            else:
                registry.add_recognizer(recognizer)
    if too_weak:
        log.warning("privacy: entities inactive, their patterns score below the threshold",
                    extra={"fields": {"entities": sorted(too_weak)}})
        inactive = inactive | too_weak
    for recognizer in ours.custom_recognizers():
        if set(recognizer.supported_entities) & requested:
            if scanner is not None:
                scanner.add(recognizer, _cut(recognizer.supported_entities[0], recognizer, cuts))
            else:
                registry.add_recognizer(recognizer)
    if model is not None and requested & NER_ENTITIES:
        registry.add_nlp_recognizer(nlp_engine=nlp)
    engine = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=[LANGUAGE],
                            context_aware_enhancer=enhancer)
    detectable = (requested & (frozenset(PRESIDIO_PATTERN_ENTITIES) | CUSTOM_ENTITIES)
                  | (requested & NER_ENTITIES if model is not None else frozenset())) - too_weak
    ner = requested & NER_ENTITIES if model is not None and tuned else frozenset()
    analyzer = Analyzer(engine, frozenset(detectable), inactive, tuned, cache_size, scanner, ner)
    analyzer.analyze([_WARM_UP], detectable, 0.0)  # compile every pattern now, not per request
    return analyzer
