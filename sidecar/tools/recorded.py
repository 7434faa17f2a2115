"""Recorded events, as the sidecar's JSON-lines file sink writes them: one CloudEvents 1.0
structured envelope a line (``{"specversion": "1.0", "type": ..., "data": {...}}``).

Lines without ``specversion`` are taken as bare ``data`` dicts of inference events.
Only ``ai.inference.completed`` events are yielded; other types (alerts, policy changes)
are counted by type; blank lines are ignored; anything else (not JSON, not an object, an
envelope without a ``data`` object) is counted as malformed with its line number. Never
raises for a line's content.

>>> import tempfile, os
>>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
...     _ = f.write('{"specversion": "1.0", "type": "ai.inference.completed", '
...                 '"time": "2025-01-01T00:00:00Z", "data": {"latency_ms": 3}}\\n'
...                 '{"specversion": "1.0", "type": "ai.detector.alert", "data": {}}\\n'
...                 'not json\\n\\n{"latency_ms": 4, "timestamp": "2025-01-01T00:00:01Z"}\\n')
>>> recorded = Recorded(f.name)
>>> [(line, data["latency_ms"], stamp) for line, data, stamp in recorded.events()]
[(1, 3, '2025-01-01T00:00:00Z'), (5, 4, '2025-01-01T00:00:01Z')]
>>> recorded.stats.events, dict(recorded.stats.other_types), recorded.stats.malformed
(2, {'ai.detector.alert': 1}, [(3, 'not JSON')])
>>> os.unlink(f.name)
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

# sidecar.telemetry's EVENT_TYPE_* (tests check they agree): importing it loads
# prometheus-client, 60 ms the command line need not wait for.
INFERENCE: Final = "ai.inference.completed"
ALERT: Final = "ai.detector.alert"
POLICY_CHANGED: Final = "ai.detector.policy_changed"
MALFORMED_KEPT: Final = 1_000  # line numbers kept; past that, only counted


@dataclass
class ReadStats:
    lines: int = 0
    events: int = 0  # inference events yielded
    other_types: Counter[str] = field(default_factory=Counter)
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line, why), the first
    malformed_count: int = 0


class Recorded:
    """One events file; ``events()`` reads it again on every call (``stats`` is reset)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = os.stat(path).st_size  # OSError: missing
        if not os.path.isfile(path):
            raise IsADirectoryError(f"{path} is not a file")
        with open(path, "rb"):  # OSError: unreadable (stat does not need read permission)
            pass
        self.stats = ReadStats()

    def events(
        self, progress: Callable[[int], object] | None = None
    ) -> Iterator[tuple[int, dict[str, Any], str | None]]:
        """``(line number, data, timestamp)`` of each inference event; ``progress`` gets
        the bytes read after each line."""
        self.stats = stats = ReadStats()
        with open(self.path, "rb") as lines:
            for number, line in enumerate(lines, 1):
                stats.lines = number
                if progress is not None:
                    progress(len(line))
                if not line.strip():
                    continue
                data, stamp, why = _parse(line, stats)
                if why:
                    stats.malformed_count += 1
                    if len(stats.malformed) < MALFORMED_KEPT:
                        stats.malformed.append((number, why))
                elif data is not None:
                    stats.events += 1
                    yield number, data, stamp


def _parse(line: bytes, stats: ReadStats) -> tuple[dict[str, Any] | None, str | None, str]:
    """(data, timestamp, "") for an inference event; (None, None, "") for another type;
    (None, None, why) for a malformed line."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None, "not JSON"
    if not isinstance(value, dict):
        return None, None, "not a JSON object"
    if "specversion" not in value:  # a bare data dict: what ``jq -c .data`` gives
        kind = value.get("event_type") or _bare_kind(value)
        if kind != INFERENCE:
            stats.other_types[str(kind)[:64]] += 1
            return None, None, ""
        return value, _text(value.get("timestamp")), ""
    kind = value.get("type")
    if kind != INFERENCE:
        stats.other_types[str(kind)[:64]] += 1
        return None, None, ""
    data = value.get("data")
    if not isinstance(data, dict):
        return None, None, "an inference event without a data object"
    return data, _text(data.get("timestamp")) or _text(value.get("time")), ""


def _bare_kind(data: dict[str, Any]) -> str:
    """The type of a bare data dict without ``event_type`` (alerts and policy changes
    have none), by the id only that type carries; an inference otherwise."""
    if "alert_id" in data:
        return ALERT
    if "change_id" in data:
        return POLICY_CHANGED
    return INFERENCE


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
