"""Durability: the event log between the request path and delivery.

``WriteAheadLog`` (``durability: disk``) keeps events on local disk across crashes and
restarts; ``MemoryLog`` (``durability: memory``) has the same interface and semantics
without a disk. Both implement ``EventLog`` (``base.py``); the on-disk format is described
in ``wal.py``.
"""

from sidecar.durability.base import WHEN_FULL, EventLog, LogFull, LogLocked, LogStats
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog

__all__ = [
    "WHEN_FULL",
    "EventLog",
    "LogFull",
    "LogLocked",
    "LogStats",
    "MemoryLog",
    "WriteAheadLog",
]
