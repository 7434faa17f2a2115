"""Privacy profiles: what an event may carry of a request and its response (issue 4).

A profile is a YAML file. The shipped ones live in the ``privacy_profiles`` package
(``strict``, ``standard``, ``metadata-only``) and are picked by name; any other file is
picked by path. ``load_profile`` validates everything before the sidecar serves: a profile
that does not validate raises ``ProfileError`` naming the file, the key and the reason, so
a typo cannot quietly record (or drop) more than intended.

Every event records the profile's name and ``digest`` (sha256 of the canonical, defaults
filled in content: comments and key order do not change it, any rule does), so a reader
can tell which policy produced a payload.

Format (see ``privacy_profiles/strict.yaml`` for a commented example)::

    name: strict                    # defaults to the file name
    retention_class: high-risk      # required; a tag consumers route retention on
    sample_rate: 0.05               # required; share of inferences with payloads
    always_capture: [errors, alerts, rejections]
    max_captured_bytes: 16KiB
    score_threshold: 0.35
    request:  {keep: [$.messages[*].content], drop: [], text: false}
    response: {keep: [$.choices[*].message.content], text: false}
    headers:  {allow: [user-agent]}  # credentials are refused: rules.header_denied
    query:    {capture: true}
    entities: {EMAIL_ADDRESS: redact, CREDIT_CARD: {operator: mask, chars_to_keep: 4}}
    ner_model: en_core_web_sm       # optional spaCy model (package name or path)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from detectors.yamlfile import UniqueKeyLoader, yaml_problem
from sidecar.privacy import rules
from sidecar.privacy.rules import BodyRule, EntityRule, Invalid

_TOP_LEVEL = ("name", "description", "retention_class", "sample_rate", "always_capture",
              "max_captured_bytes", "score_threshold", "request", "response", "headers",
              "query", "entities", "ner_model")
DEFAULT_MAX_CAPTURED_BYTES = 64 * 1024
DEFAULT_SCORE_THRESHOLD = 0.5


class ProfileError(ValueError):
    """A profile that cannot be used: ``file``, ``key`` (dotted path) and ``reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"privacy profile {file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PrivacyProfile:
    """A validated profile. Immutable: built once at start-up, shared by every request."""

    name: str
    source: str
    digest: str
    retention_class: str
    sample_rate: float
    always_capture: frozenset[str]
    max_captured_bytes: int
    score_threshold: float
    request: BodyRule
    response: BodyRule
    headers_allow: tuple[str, ...]
    query_capture: bool
    entities: Mapping[str, EntityRule]
    ner_model: str | None = None
    description: str = ""

    @property
    def captures_payload(self) -> bool:
        """False when no body or query string can ever be recorded (``metadata-only``):
        sampling then reports ``disabled`` instead of ``not_sampled``."""
        wants = self.request.captures or self.response.captures or self.query_capture
        return wants and self.max_captured_bytes > 0

    def rule(self, entity: str) -> EntityRule | None:
        return self.entities.get(entity)


def shipped_profiles() -> tuple[str, ...]:
    """The names of the profiles in the ``privacy_profiles`` package."""
    folder = resources.files("privacy_profiles")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")))


def load_profile(name_or_path: str | Path) -> PrivacyProfile:
    """Load and validate a shipped profile by name, or any profile file by path.

    A string with a path separator or a ``.yaml``/``.yml`` suffix is a path; anything else
    is a shipped name. Raises ``ProfileError`` (a ``ValueError``) on any problem.
    """
    text, source, stem = _read(name_or_path)
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except (yaml.YAMLError, RecursionError) as exc:
        raise ProfileError(source, "(file)", f"not valid YAML: {yaml_problem(exc)}") from None
    try:
        return _build(raw, source, stem)
    except Invalid as exc:
        raise ProfileError(source, exc.key, exc.reason) from None


def _read(name_or_path: str | Path) -> tuple[str, str, str]:
    given = str(name_or_path)
    is_path = isinstance(name_or_path, Path) or "/" in given or given.endswith((".yaml", ".yml"))
    if is_path:
        path = Path(given)
        try:
            return path.read_text(encoding="utf-8"), str(path), path.stem
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(str(path), "(file)", f"cannot be read: {exc}") from None
    if given not in shipped_profiles():
        raise ProfileError(given, "(name)", "no shipped profile by that name; shipped: "
                           f"{', '.join(shipped_profiles())}; or give a path to a .yaml file")
    resource = resources.files("privacy_profiles") / f"{given}.yaml"
    return resource.read_text(encoding="utf-8"), f"privacy_profiles/{given}.yaml", given


def _build(raw: Any, source: str, stem: str) -> PrivacyProfile:
    top = rules.mapping(raw, "(document)")
    rules.no_unknown_keys(top, _TOP_LEVEL, "")
    for required in ("retention_class", "sample_rate"):
        if required not in top:
            raise Invalid(required, "required")
    name = top.get("name", stem)
    if not isinstance(name, str) or not name.strip():
        raise Invalid("name", f"expected a non-empty string, got {name!r}")
    description = top.get("description", "")
    if not isinstance(description, str):
        raise Invalid("description", "expected a string")
    query = rules.mapping(top.get("query"), "query")
    rules.no_unknown_keys(query, ("capture",), "query.")
    ner_model = top.get("ner_model")
    if ner_model is not None and (not isinstance(ner_model, str) or not ner_model.strip()):
        raise Invalid("ner_model", "expected a spaCy model package name or a path")
    threshold = top.get("score_threshold", DEFAULT_SCORE_THRESHOLD)
    fields: dict[str, Any] = {
        "name": name.strip(),
        "description": description.strip(),
        "retention_class": rules.tag(top["retention_class"], "retention_class"),
        "sample_rate": rules.rate(top["sample_rate"], "sample_rate"),
        "always_capture": rules.always_capture(top.get("always_capture"), "always_capture"),
        "max_captured_bytes": rules.size(
            top.get("max_captured_bytes", DEFAULT_MAX_CAPTURED_BYTES), "max_captured_bytes"),
        "score_threshold": rules.rate(threshold, "score_threshold"),
        "request": rules.body(top.get("request"), "request"),
        "response": rules.body(top.get("response"), "response"),
        "headers_allow": rules.header_allow_list(top.get("headers"), "headers"),
        "query_capture": rules.boolean(query.get("capture", False), "query.capture"),
        "entities": rules.entities(top.get("entities"), "entities"),
        "ner_model": ner_model.strip() if isinstance(ner_model, str) else None,
    }
    return PrivacyProfile(source=source, digest=_digest(fields), **fields)


def _digest(fields: Mapping[str, Any]) -> str:
    """sha256 of the normalised profile as canonical JSON (sorted keys, no whitespace)."""
    canonical = {
        key: asdict(value) if isinstance(value, BodyRule) else value
        for key, value in fields.items()
    }
    canonical["always_capture"] = sorted(fields["always_capture"])
    canonical["entities"] = {k: asdict(v) for k, v in fields["entities"].items()}
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()


class ProfileSelector:
    """The profile for each route: one default, optionally overridden per route template
    (issue 4: "optionally per route"). All profiles are loaded, so validated, up front."""

    def __init__(self, default: str | Path | PrivacyProfile,
                 per_route: Mapping[str, str | Path] | None = None):
        self.default = default if isinstance(default, PrivacyProfile) else load_profile(default)
        self._routes = {route: load_profile(ref) for route, ref in (per_route or {}).items()}

    def for_route(self, route: str) -> PrivacyProfile:
        return self._routes.get(route, self.default)

    @property
    def profiles(self) -> tuple[PrivacyProfile, ...]:
        """Every distinct profile in use (build one analyzer covering all of them)."""
        seen: dict[str, PrivacyProfile] = {self.default.digest: self.default}
        for profile in self._routes.values():
            seen.setdefault(profile.digest, profile)
        return tuple(seen.values())
