"""Recognizers the sidecar adds to presidio's, or uses in place of presidio's.

Custom entities (issue 4: "recognizers that matter for model traffic"): ``API_KEY``
(OpenAI/Anthropic ``sk-``, GitHub, Slack, Google, Stripe, Hugging Face, and long mixed-case
high-entropy strings), ``AWS_ACCESS_KEY_ID``, ``JWT`` and ``BEARER_TOKEN`` (the token after
``Bearer``, so the masked text still reads ``Bearer <BEARER_TOKEN>``).

``OfflineEmailRecognizer``: presidio's email recognizer validates the domain with
``tldextract.extract``, whose module-level extractor fetches the Public Suffix List over
the network on first use (and logs a traceback per URL when it cannot). Ours uses an
extractor built with no URLs and no cache directory: the suffix snapshot inside the
tldextract wheel, never the network, never a write to ``~/.cache``.

``FastPhoneRecognizer``: presidio's phone detection (libphonenumber, same regions, same
score) without running libphonenumber's matcher over the whole text once per region.

Where recognizers run (anchored windows) is ``windowing.py``'s business.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from typing import ClassVar

import phonenumbers
import tldextract
from presidio_analyzer import (
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IbanRecognizer,
    PhoneRecognizer,
)

# Case-sensitive: presidio's default adds IGNORECASE, which would let "akia..." or any
# lower-case word run pass for a key.
_CASE_SENSITIVE = re.DOTALL | re.MULTILINE

_OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(),
                                     fallback_to_snapshot=True)


class OfflineEmailRecognizer(EmailRecognizer):
    """presidio's ``EmailRecognizer`` with the domain check done offline (bundled PSL),
    and domain labels of letters, digits and hyphens: presidio's ``\\w`` took an "_" after
    the domain into it ("jane@example.com_x"), failed the domain check and let the
    address through."""

    _DOMAIN = r"[@]\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+)\b"
    # ... and the address ends where no letter or digit follows, "_" included. Written
    # without a negated class ([^\W_]), which would take the recognizer off the cheap
    # token cut of its "@" family (prefilter.no_space).
    _LABEL = r"(?:(?!_)\w)+"
    _LABELS = (rf"[@]{_LABEL}(?:-+{_LABEL})*(?:\.{_LABEL}(?:-+{_LABEL})*)+)"
               r"(?!(?!_)\w)")

    def __init__(self) -> None:
        super().__init__()
        patterns: list[Pattern] = vars(self)["patterns"]  # unannotated in presidio
        for pattern in patterns:
            # a presidio whose pattern differs keeps its own (a test notices)
            pattern.regex = pattern.regex.replace(self._DOMAIN, self._LABELS)

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_TLD(pattern_text).fqdn != ""


class AnyCaseIbanRecognizer(IbanRecognizer):
    """presidio's IBAN recognizer, which reads upper case only, also over an upper-cased
    copy of the text: an IBAN written in lower case is found, its check digits tested.
    (Not by ignoring case: presidio's pattern then takes the words around an IBAN for
    more of it, and misses "IS ES21...".)

    >>> text = "to de89 3704 0044 0532 0130 00, not de89 3704 0044 0532 0130 01"
    >>> [(text[r.start:r.end], r.score) for r in AnyCaseIbanRecognizer().analyze(
    ...     text, ["IBAN_CODE"])]
    [('de89 3704 0044 0532 0130 00', 1.0)]
    """

    _LOWER_HEAD = re.compile(r"(?<![A-Za-z0-9])(?:[a-z][A-Za-z]|[A-Z][a-z])[0-9]{2}")
    _WINDOW = 64

    def __init__(self) -> None:
        super().__init__(supported_language="en")

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        # presidio's IBAN analyze reads neither NLP artifacts nor flags
        results: list[RecognizerResult] = super().analyze(text, entities)
        taken = [(r.start, r.end) for r in results]
        # Only where an IBAN could start with a lower-case letter, over the longest one
        # can be (34 characters, 8 spaces) and a margin: not the whole text again.
        for head in self._LOWER_HEAD.finditer(text):
            start = head.start()
            window = text[start:start + self._WINDOW]
            upper = window.upper()
            if len(upper) != len(window):  # offsets would move ("ß" is "SS")
                continue
            for found in super().analyze(upper, entities):
                found.start, found.end = found.start + start, found.end + start
                if not any(found.start < end and s < found.end for s, end in taken):
                    results.append(found)
                    taken.append((found.start, found.end))
        return results


class ApiKeyRecognizer(PatternRecognizer):
    """Vendor API keys by prefix, and long mixed-case random-looking tokens."""

    PATTERNS: ClassVar[list[Pattern]] = [
        # One alternation, not one pattern per vendor: one scan of the text instead of seven.
        # Prefixes in any case: a copy upper-cased on the way (a model echoing text, a
        # logging proxy) is still the key.
        Pattern("vendor prefix", r"(?<![A-Za-z0-9_-])(?:(?i:sk-)[A-Za-z0-9_-]{20,}"  # OpenAI
                r"|(?i:gh[pousr]_)[A-Za-z0-9]{30,}|(?i:github_pat_)[A-Za-z0-9_]{40,}"  # GitHub
                r"|(?i:xox[abprs]-)[A-Za-z0-9-]{10,}"  # Slack
                r"|(?i:aiza)[0-9A-Za-z_-]{35}"  # Google
                r"|(?i:[rsp]k_(?:live|test)_)[0-9A-Za-z]{16,}"  # Stripe
                r"|(?i:hf_)[A-Za-z0-9]{30,}"  # Hugging Face
                r"|(?i:glpat-)[A-Za-z0-9_-]{20,})", 0.9),  # GitLab
        Pattern("high entropy", r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/=-]{32,}", 0.6),
    ]
    _PREFIXES = ("sk-", "gh", "github_pat_", "xox", "aiza", "hf_", "rk_", "sk_", "pk_",
                 "glpat-")

    def __init__(self) -> None:
        super().__init__(supported_entity="API_KEY", patterns=list(self.PATTERNS),
                         global_regex_flags=_CASE_SENSITIVE, name="ApiKeyRecognizer")

    def invalidate_result(self, pattern_text: str) -> bool:
        """Drop the generic pattern's matches that do not look random: a key mixes upper,
        lower case and digits, with high per-character entropy (hex digests and words
        glued by hyphens do not)."""
        if pattern_text[:11].lower().startswith(self._PREFIXES):
            return False
        upper = any(c.isupper() for c in pattern_text)
        lower = any(c.islower() for c in pattern_text)
        if not any(c.isdigit() for c in pattern_text) or not (upper or lower):
            return True
        if upper and lower:
            return _entropy(pattern_text) < 4.0
        # One case only, as a key upper-cased on the way: taken if it is one run of
        # letters and digits (words glued by hyphens or underscores are not), not hex (a
        # digest), and about as varied as random text.
        if "-" in pattern_text or "_" in pattern_text:
            return True
        if not any(c in _NOT_HEX for c in pattern_text.lower()):
            return True
        return _entropy(pattern_text) < 3.8


class FastPhoneRecognizer(LocalRecognizer):
    """Phone numbers as presidio finds them (libphonenumber, presidio's regions, "valid"
    leniency, score 0.4), several times faster.

    presidio runs ``PhoneNumberMatcher`` once per region over the whole text: ~50-200 us
    per region per candidate. We find the candidates with one regex (runs of 7 or more
    digits with phone punctuation), then ``parse`` + ``is_valid_number`` per region until
    one accepts it. Runs with more than 15 digits (the E.164 maximum: numbers side by
    side) go to presidio's matcher.
    """

    SCORE = PhoneRecognizer.SCORE
    # Digits and phone punctuation: "+1 (212) 555-0143", "212.555.0143", "030 / 1234567",
    # "03\u30fc1234\u30fc5678" (the text is folded: fold.py);
    # not ". (" or ", ": sentence punctuation must not glue two numbers into one run.
    # Not after a letter or digit, as libphonenumber; after "_" yes (tel_212-555-0143).
    _RUN = re.compile(r"(?<![^\W_]|\+)\+?\(?[0-9]"
                      r"(?:(?:\.|[ \t]?[-/(~\u30fc][ \t]?|\)[ \t-]?|[ \t])?[0-9]){6,}")
    _IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")  # an address, not a phone number
    _IBAN_HEAD = re.compile(r"[A-Z]{2}[0-9]{2} ?$")  # "DE89 3704 0044 0532 0130 00"

    def __init__(self) -> None:
        self.regions = PhoneRecognizer.DEFAULT_SUPPORTED_REGIONS
        super().__init__(supported_entities=["PHONE_NUMBER"], name="FastPhoneRecognizer",
                         supported_language="en")

    def load(self) -> None:
        """Nothing to load: libphonenumber's metadata loads lazily per region."""

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for run in self._RUN.finditer(text):
            iban_tail = self._IBAN_HEAD.search(text, max(0, run.start() - 5), run.start())
            for start, end in self._phones(run.group(), run.start(), iban_tail is not None):
                results.append(RecognizerResult(
                    "PHONE_NUMBER", start, end, self.SCORE,
                    recognition_metadata={RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                                          RecognizerResult.RECOGNIZER_NAME_KEY: "FastPhone"}))
        return results

    def _phones(self, run: str, offset: int, iban_tail: bool) -> list[tuple[int, int]]:
        if self._IPV4.fullmatch(run):
            return []
        if sum(c.isdigit() for c in run) <= 15:
            if self._valid(run):
                return [(offset, offset + len(run))]
            # A number next to another ("+1 212-555-0143 24/7"): the run less a group or
            # two at either end, as libphonenumber's matcher would find it inside.
            for start, end in self._trimmed(run):
                if self._valid(run[start:end]):
                    return [(offset + start, offset + end)]
            return []
        # The IBAN's or card's recognizer's, and slow to rule out; a card number only when
        # written as the card's recognizer reads one (digits, spaces, hyphens).
        if iban_tail or (_luhn(run) and _CARD_CHARS.issuperset(run)):
            return []
        # Longer than any phone number: several numbers side by side. Rare; let
        # libphonenumber's matcher split them, as presidio would.
        found = {(offset + m.start, offset + m.end) for region in self.regions
                 for m in phonenumbers.PhoneNumberMatcher(run, region, leniency=1)}
        return sorted(found)

    _GROUP_EDGE = re.compile(r"[^0-9]+")

    def _trimmed(self, run: str) -> list[tuple[int, int]]:
        """Spans of ``run`` without its last, or first, one or two digit groups, longest
        first, each still of 7 digits or more."""
        cuts = [m.span() for m in self._GROUP_EDGE.finditer(run)]
        spans = [(0, cut[0]) for cut in cuts[-2:][::-1]]
        spans += [(cut[1], len(run)) for cut in cuts[:2]]
        return [(a, b) for a, b in spans if sum(c.isdigit() for c in run[a:b]) >= 7]

    def _valid(self, candidate: str) -> bool:
        regions: tuple[str | None, ...] = (None,) if candidate.startswith("+") else self.regions
        for region in regions:
            try:
                number = phonenumbers.parse(candidate, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False


_CARD_CHARS = frozenset("0123456789 -")


def _luhn(run: str) -> bool:
    digits = [int(c) for c in run if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d)
                for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


_NOT_HEX = frozenset("ghijklmnopqrstuvwxyz")


def _entropy(text: str) -> float:
    counts = Counter(text)
    total = len(text)
    return -sum(n / total * math.log2(n / total) for n in counts.values())


def custom_recognizers() -> list[EntityRecognizer]:
    """One instance of each recognizer for ``CUSTOM_ENTITIES``."""
    # Bounded by letters and digits, not by \b: "_" is a word character, and keys sit
    # in names such as aws_key_AKIA... or token_eyJ...
    aws = PatternRecognizer(
        supported_entity="AWS_ACCESS_KEY_ID", name="AwsAccessKeyRecognizer",
        patterns=[Pattern("aws key id",
                          r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Za-z0-9])",
                          0.95)],
        global_regex_flags=_CASE_SENSITIVE)
    jwt = PatternRecognizer(
        supported_entity="JWT", name="JwtRecognizer",
        patterns=[Pattern("jwt", r"(?<![A-Za-z0-9])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}"
                                 r"\.[A-Za-z0-9_-]*", 0.95)],
        global_regex_flags=_CASE_SENSITIVE)
    return [ApiKeyRecognizer(), aws, jwt, BearerTokenRecognizer()]


class BearerTokenRecognizer(PatternRecognizer):
    """HTTP credentials written out: the token after ``Bearer``, the base64 user:password
    after ``Basic``, the password of a ``scheme://user:password@`` URL and of ``curl -u
    user:password``. The span starts at the secret, so masked text still reads ``Bearer
    <BEARER_TOKEN>`` or ``postgres://admin:<BEARER_TOKEN>@db``. (A look-behind would say
    the same, but costs a test at every position of the text; these patterns start with
    a literal.)"""

    _PREFIX = re.compile(r"(?:[Bb][Ee][Aa][Rr][Ee][Rr]|[Bb][Aa][Ss][Ii][Cc])[ \t]*"
                         r"|://[^\s:/@?#]{0,64}:"
                         r"|-(?:u|-user)(?:[ \t]+|=)[^\s:]{1,64}:")

    def __init__(self) -> None:
        super().__init__(
            supported_entity="BEARER_TOKEN", name="BearerTokenRecognizer",
            patterns=[
                # No space needed: a zero-width one is taken out of the text read (fold.py)
                Pattern("bearer", r"\b(?i:bearer)[ \t]{0,8}[A-Za-z0-9._~+/-]{8,}=*", 0.9),
                Pattern("basic", r"\b(?i:basic)[ \t]{0,8}[A-Za-z0-9+/]{6,}={0,2}", 0.9),
                # the password of user:password@ (the username stays: it names the account)
                # up to the last "@" of the authority: a password may hold one ("%40" is
                # read as "@"); the user may be empty (redis://:password@host)
                Pattern("url userinfo", r"://[^\s:/@?#]{0,64}:[^\s/?#]{1,128}(?=@)", 0.9),
                Pattern("curl -u", r"(?<![^\s])-(?:u|-user)(?:[ \t]+|=)[^\s:]{1,64}:\S{1,128}",
                        0.9),
            ],
            global_regex_flags=_CASE_SENSITIVE)

    def invalidate_result(self, pattern_text: str) -> bool:
        """After ``Basic``, only what decodes to user:password ("a basic approach" is
        prose)."""
        if pattern_text[:5].lower() != "basic":
            return False
        value = pattern_text[5:].strip()
        try:
            decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            return True
        return b":" not in decoded or not decoded.decode("utf-8", "replace").isprintable()

    def analyze(self, text: str, entities: list[str],
                nlp_artifacts: NlpArtifacts | None = None,
                regex_flags: int | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts,
                                                          regex_flags)
        for result in results:
            prefix = self._PREFIX.match(text, result.start)
            if prefix is not None:
                result.start = prefix.end()
        return results
