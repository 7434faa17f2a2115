"""``replay --sweep KEY=V1,V2,...``: the detectors file again with one setting changed,
for each value (the cartesian product over several ``--sweep``).

``KEY`` is ``DETECTOR.params.PARAM``, ``DETECTOR.severity`` or ``DETECTOR.mode``, with
``DETECTOR`` a name in the detectors file. Values are read as YAML scalars, except that
anything Python reads as an int or a float is a number (``1e-5`` included, which YAML 1.1
would keep as a string). Every variant is validated by ``detectors.config`` as a whole
file would be; a bad value is refused before anything runs.

>>> from detectors.config import load_config
>>> sweeps = [parse_sweep("token-usage.params.min_score=2,4")]
>>> [(setting, [s.params["min_score"] for s in config.specs])
...  for setting, config in variants(load_config(), sweeps)]
[(('2',), [2]), (('4',), [4])]
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from detectors.config import DetectorsConfig, config_from_dict
from detectors.registry import TYPES, DetectorSpec


class SweepError(ValueError):
    """A ``--sweep`` that names nothing known or has no value (one line, exit 2)."""


@dataclass(frozen=True, slots=True)
class Sweep:
    key: str  # as given: DETECTOR.params.PARAM
    detector: str
    path: tuple[str, ...]  # ("params", PARAM) or ("severity",) or ("mode",)
    texts: tuple[str, ...]  # the values as given
    values: tuple[Any, ...]


def parse_sweep(text: str) -> Sweep:
    key, sep, raw = text.partition("=")
    texts = tuple(v.strip() for v in raw.split(",")) if sep else ()
    if not texts or not all(texts):
        raise SweepError(f"--sweep {text}: expected KEY=V1,V2,... (no empty value)")
    detector, dot, rest = key.strip().partition(".")
    path = tuple(rest.split(".")) if dot else ()
    if not detector or not (path in (("severity",), ("mode",))
                            or (len(path) == 2 and path[0] == "params" and path[1])):
        raise SweepError(f"--sweep {text}: KEY must be DETECTOR.params.PARAM, "
                         "DETECTOR.severity or DETECTOR.mode")
    return Sweep(key.strip(), detector, path, texts, tuple(_value(v) for v in texts))


def _value(text: str) -> Any:
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:  # "[1" after the split at commas, "@x", "%x"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SweepError(f"--sweep value {text!r} is not a YAML value ({problem}); "
                         "values are separated by commas, so a list cannot be one") from None


def check(config: DetectorsConfig, sweeps: Sequence[Sweep]) -> None:
    """Refuse a sweep of a detector or parameter ``config`` does not have."""
    names = {spec.name: spec for spec in config.specs}
    for sweep in sweeps:
        spec = names.get(sweep.detector)
        if spec is None:
            known = ", ".join(names) or "none"
            raise SweepError(f"--sweep {sweep.key}: no detector {sweep.detector!r} in "
                             f"{config.source} (detectors: {known})")
        if sweep.path[0] == "params":
            fields = [f.name for f in dataclasses.fields(TYPES[spec.type].params)]
            if sweep.path[1] not in fields:
                raise SweepError(f"--sweep {sweep.key}: type {spec.type} has no parameter "
                                 f"{sweep.path[1]!r} (parameters: {', '.join(fields) or 'none'})")
    keys = [s.key for s in sweeps]
    if len(set(keys)) != len(keys):
        raise SweepError(f"--sweep: a key is given twice ({', '.join(keys)})")


def variants(
    config: DetectorsConfig, sweeps: Sequence[Sweep]
) -> list[tuple[tuple[str, ...], DetectorsConfig]]:
    """For each combination of values (as given), the swept detectors' validated config:
    only the detectors a sweep names (the others do the same in every variant).
    ``DetectorConfigError`` names the variant, the key and the reason."""
    check(config, sweeps)
    swept = [s for s in config.specs if any(w.detector == s.name for w in sweeps)]
    out = []
    for combination in itertools.product(*(range(len(s.values)) for s in sweeps)):
        entries = {spec.name: _entry(spec) for spec in swept}
        for sweep, i in zip(sweeps, combination, strict=True):
            target = entries[sweep.detector]
            if sweep.path[0] == "params":
                target["params"][sweep.path[1]] = sweep.values[i]
            else:
                target[sweep.path[0]] = sweep.values[i]
        setting = tuple(s.texts[i] for s, i in zip(sweeps, combination, strict=True))
        source = f"{config.source} with " + ", ".join(
            f"{s.key}={text}" for s, text in zip(sweeps, setting, strict=True))
        data = {"version": 1, "detectors": list(entries.values())}
        out.append((setting, config_from_dict(data, source)))
    return out


def _entry(spec: DetectorSpec) -> dict[str, Any]:
    """A spec back as a detectors-file entry (every parameter spelled out)."""
    entry: dict[str, Any] = {"name": spec.name, "type": spec.type, "severity": spec.severity,
                             "mode": spec.mode, "params": dict(spec.params)}
    if spec.feature is not None:
        entry["feature"] = spec.feature
        entry["transform"] = spec.transform
    return entry
