"""The detectors file (YAML) → validated ``DetectorSpec``s and a digest.

::

    version: 1                      # optional; only 1 exists
    detectors:
      - name: latency-adwin         # unique; [a-z0-9][a-z0-9_.-]*, used in alerts and metrics
        type: adwin                 # a registered type (detectors.registry.TYPES)
        feature: latency_ms         # a derived name or path (detectors.features)
        transform: log1p            # none | log1p (numeric features only)
        severity: warning           # info | warning | critical
        mode: monitor               # monitor | enforce (enforce: only enforceable types)
        params: {delta: 0.0001}     # the type's parameters; the rest keep their defaults

An invalid file raises ``DetectorConfigError`` naming the file, the key as a path
(``detectors[2].params.delta``) and the reason. The digest (``sha256:<hex>``) covers the
normalised config (every setting, defaults filled in, key order and comments ignored),
so it changes exactly when what the detectors do changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from detectors.base import MODES, SEVERITIES, ParamError
from detectors.features import TRANSFORMS, FeatureError
from detectors.registry import TYPES, DetectorSpec, DetectorType, build
from detectors.yamlfile import UniqueKeyLoader, yaml_problem

DEFAULT_SOURCE: Final = "detectors/default.yaml (built in)"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_ENTRY_KEYS: Final = ("name", "type", "feature", "transform", "severity", "mode", "params")


class DetectorConfigError(ValueError):
    """The detectors file is unusable: ``source`` (file), ``key`` (path), ``reason``."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DetectorsConfig:
    source: str
    specs: tuple[DetectorSpec, ...]
    digest: str


def load_config(path: str | Path | None = None) -> DetectorsConfig:
    """Read and validate a detectors file; ``None`` reads the built-in default.

    >>> config = load_config()
    >>> config.digest.startswith("sha256:"), len(config.specs) > 0
    (True, True)
    """
    if path is None:
        text = resources.files("detectors").joinpath("default.yaml").read_text("utf-8")
        return parse_config(text, DEFAULT_SOURCE)
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DetectorConfigError(source, "(file)", f"cannot read: {exc}") from exc
    return parse_config(text, source)


def parse_config(text: str, source: str) -> DetectorsConfig:
    """Validate a detectors file's text; ``source`` names it in errors.

    >>> parse_config("detectors:\\n  - {name: x, type: adwin, feature: latency_ms,"
    ...              " params: {delta: 2}}", "d.yaml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    detectors.config.DetectorConfigError: d.yaml: detectors[0].params.delta: must be between...
    """
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader
    except (yaml.YAMLError, RecursionError) as exc:
        raise DetectorConfigError(source, "(file)", f"not valid YAML: {yaml_problem(exc)}") \
            from None
    return config_from_dict(data, source)


def config_from_dict(data: Any, source: str) -> DetectorsConfig:
    """Validate a detectors file already parsed (``{"detectors": [...]}``), as
    ``parse_config`` does; ``replay --sweep`` validates each variant this way.

    >>> entry = {"name": "x", "type": "rate_burst", "params": {"factor": 3}}
    >>> config_from_dict({"detectors": [entry]}, "sweep").specs[0].params["factor"]
    3
    >>> config_from_dict({"detectors": [{**entry, "params": {"factor": -1}}]}, "sweep")
    Traceback (most recent call last):
      ...
    detectors.config.DetectorConfigError: sweep: detectors[0].params.factor: must be > 0
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise DetectorConfigError(source, "(top level)", "must be a mapping with 'detectors'")
    for key in data:
        if key not in ("version", "detectors"):
            raise DetectorConfigError(source, str(key), "unknown key (expected version, detectors)")
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:  # YAML's true is 1 to Python
        raise DetectorConfigError(source, "version", "only version 1 exists")
    entries = data.get("detectors", [])
    if not isinstance(entries, list):
        raise DetectorConfigError(source, "detectors", "must be a list of detectors")
    specs: list[DetectorSpec] = []
    for i, entry in enumerate(entries):
        spec = _spec(entry, f"detectors[{i}]", source)
        if any(s.name == spec.name for s in specs):
            key, reason = f"detectors[{i}].name", f"{spec.name!r} is used twice"
            raise DetectorConfigError(source, key, reason)
        specs.append(spec)
    normalised = [spec.normalised() for spec in specs]
    return DetectorsConfig(source, tuple(specs), _digest({"version": 1, "detectors": normalised}))


def _digest(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def _spec(entry: Any, at: str, source: str) -> DetectorSpec:
    def fail(key: str, reason: str) -> DetectorConfigError:
        return DetectorConfigError(source, f"{at}.{key}" if key else at, reason)

    if not isinstance(entry, dict):
        raise fail("", "must be a mapping (name, type, ...)")
    for key in entry:
        if key not in _ENTRY_KEYS:
            raise fail(str(key), f"unknown key (expected one of {', '.join(_ENTRY_KEYS)})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail("name", "required: lower-case letters, digits, '_', '.', '-' (max 63)")
    type_name = entry.get("type")
    if type_name not in TYPES:
        raise fail("type", f"{type_name!r} is not one of {', '.join(sorted(TYPES))}")
    detector_type = TYPES[type_name]
    feature, transform = entry.get("feature"), entry.get("transform", "none")
    if detector_type.feature == "none":
        if feature is not None or transform != "none":
            raise fail("feature", f"type {type_name} reads no feature")
    elif not isinstance(feature, str) or not feature:
        raise fail("feature", f"required for type {type_name}: a derived name or a path")
    if transform not in TRANSFORMS or (transform != "none" and detector_type.feature != "numeric"):
        allowed = sorted(TRANSFORMS) if detector_type.feature == "numeric" else ["none"]
        raise fail("transform", f"{transform!r} is not one of {', '.join(allowed)}")
    severity, mode = entry.get("severity", "warning"), entry.get("mode", "monitor")
    if severity not in SEVERITIES:
        raise fail("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
    if mode not in MODES:
        raise fail("mode", f"{mode!r} is not one of {', '.join(MODES)}")
    if mode == "enforce" and not detector_type.enforceable:
        raise fail("mode", f"type {type_name} cannot decide before forwarding: use monitor")
    params = _params(detector_type, entry.get("params", {}), fail)
    spec = DetectorSpec(name, type_name, feature, transform, severity, mode, params)
    spec = dataclasses.replace(spec, digest=_digest(spec.normalised()))
    try:
        build(spec)  # the feature path and anything else only the detector knows
    except FeatureError as exc:
        raise fail("feature", str(exc)) from exc
    except (ParamError, ValueError, TypeError) as exc:
        raise fail("params", str(exc)) from exc
    return spec


def _params(detector_type: DetectorType, raw: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail("params", "must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(detector_type.params)}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise fail(f"params.{key}", f"unknown parameter of {detector_type.name} ({known})")
        expected = fields[key].type
        if not _has_type(value, expected):
            raise fail(f"params.{key}", f"must be {expected}, got {value!r}")
        if not _finite(value):
            raise fail(f"params.{key}", f"must hold finite numbers, got {value!r}")
    try:
        params = detector_type.params(**raw)
    except ParamError as exc:
        raise fail(f"params.{exc.key}", exc.reason) from exc
    except (ValueError, TypeError) as exc:  # a feature path, a pattern... the type checked
        raise fail("params", str(exc)) from exc
    return dataclasses.asdict(params)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (YAML's .nan, .inf pass type checks, then
    every comparison with them is false)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def _has_type(value: Any, expected: Any) -> bool:
    if isinstance(value, bool):
        return expected in ("bool", bool)
    if expected in ("int", int):
        return isinstance(value, int)
    if expected in ("float", float):
        return isinstance(value, int | float)
    if expected in ("str", str):
        return isinstance(value, str)
    return True
