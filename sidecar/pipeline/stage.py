"""``WorkerStage``: what the detection and privacy stages share — a worker process
(``sidecar/workers``) called from the stage's own thread, batches taken in order from a
``BatchSource`` and passed on whole to a ``Handoff``, and a ``problem`` for operators.

A subclass says what to do with one batch (``process``: on the loop, awaiting its thread
for the worker call) and what that costs when it fails (``recover``); the batch goes on
whatever happens, and ``after`` runs once it has.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sidecar.logs import get_logger
from sidecar.pipeline.handoff import Batch, BatchSource, Handoff
from sidecar.workers.child import Child, WorkerError

log = get_logger("pipeline")
T = TypeVar("T")


class WorkerStage:
    what = "worker"  # for messages: "masking", "detection"
    without = "without it"  # what the events go without when the worker fails
    batch_max = 256

    def __init__(self, source: BatchSource, out: Handoff, child: Child) -> None:
        self.source = source
        self.out = out
        self._child = child
        self._executor = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"sidecar-{self.what}")
        self.problem: str | None = f"{self.what} worker starting"  # None when it works

    def failing(self, exc: WorkerError) -> None:
        self.problem = f"{self.what} worker failing ({exc}); events go {self.without}"

    def _warm(self) -> None:
        try:
            self._child.start()
            self.problem = None
        except WorkerError as exc:
            self.failing(exc)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # Start the worker (a second or so of imports and set-up) before the first event
        # needs it; readiness waits for the masking one.
        loop.run_in_executor(self._executor, self._warm)
        try:
            while True:
                batch = await self.source.get_batch(self.batch_max)
                if not batch:
                    return
                try:
                    await self.process(batch)
                except Exception:  # never lose or hold the batch: it goes on
                    log.error(f"{self.what} stage failed; batch goes {self.without}",
                              exc_info=True)
                    self.recover(batch)
                await self.out.put_batch(batch)
                self.after(batch)
        finally:
            self.out.close()

    async def process(self, batch: Batch) -> None:
        raise NotImplementedError

    def recover(self, batch: Batch) -> None:
        """After ``process`` raised: leave no event of ``batch`` half done."""

    def after(self, batch: Batch) -> None:
        """Once ``batch`` went on to the next stage."""

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the stage's thread (the worker call blocks)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
        self._child.close()
