"""``Exchange``: one request's event, and the moment it is handed to the pipeline."""

from __future__ import annotations

from typing import Protocol

from sidecar.events.model import InferenceEvent


class Recorder(Protocol):
    def record(self, event: InferenceEvent, started: float, then_wait: bool = False) -> int: ...

    async def wait_durable(self, seq: int, event: InferenceEvent, started: float) -> None: ...


class Exchange:
    __slots__ = ("committed", "event", "recorder", "started")

    def __init__(self, recorder: Recorder, event: InferenceEvent, started: float) -> None:
        self.recorder = recorder
        self.event = event
        self.started = started
        self.committed = False

    async def commit(self) -> None:
        """Enqueue the completed event; with ``durability: sync``, return once it is durable.

        The relay calls this just before the response's last byte, so a client never
        holds a complete answer whose evidence could still be lost. After it, the event
        belongs to the pipeline (another thread encodes it): the request path must not
        change it any more.
        """
        self.committed = True
        seq = self.recorder.record(self.event, self.started, then_wait=True)
        await self.recorder.wait_durable(seq, self.event, self.started)
