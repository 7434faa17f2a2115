"""The ``Sink`` contract every sink implements (and ``tests/sinks`` checks for each).

``write`` is blocking and runs in the pipeline's worker thread, never on the event loop.
It either stores the whole batch or raises ``SinkError`` having stored none of it, so
the pipeline can retry the same batch without duplicating or losing events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.events.model import InferenceEvent


class SinkError(Exception):
    """The batch was not stored; the message says why, for the operator."""


class Sink(Protocol):
    name: str

    @property
    def healthy(self) -> bool:
        """False while the last write failed; readiness reports it."""
        ...

    def write(self, events: Sequence[InferenceEvent]) -> None: ...

    def close(self) -> None: ...
