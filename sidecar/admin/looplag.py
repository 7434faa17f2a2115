"""Event-loop lag: how late a timer fires. Everything on the request path shares one loop,
so a blocking call anywhere shows up here first (the sidecar must never be the slow link).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Gauge, Histogram

INTERVAL_S = 0.05
WINDOW_S = 10.0


class LoopLagMonitor:
    def __init__(self, histogram: Histogram, max_gauge: Gauge) -> None:
        self._histogram = histogram
        self._max_gauge = max_gauge
        self._task: asyncio.Task[None] | None = None
        self._window: list[tuple[float, float]] = []

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(INTERVAL_S)
            lag = max(0.0, time.perf_counter() - before - INTERVAL_S)
            self._histogram.observe(lag)
            now = time.monotonic()
            self._window = [(t, v) for t, v in self._window if now - t < WINDOW_S]
            self._window.append((now, lag))
            self._max_gauge.set(max(v for _, v in self._window))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
