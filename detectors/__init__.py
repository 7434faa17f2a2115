"""Streaming drift, abuse and policy detectors (river's shape: ``update(event) -> alerts``).

Pure and synchronous; never imports ``sidecar`` or aiohttp. The detectors themselves
arrive with the detectors issue; this package holds the contract they will implement.
"""

from detectors.base import Alert, Detector, NullDetector

__all__ = ["Alert", "Detector", "NullDetector"]
