"""Streaming drift, abuse and policy detectors (river's shape: ``update(event) -> alerts``).

Pure and synchronous; never imports ``sidecar`` or aiohttp. Drift: ``drift``,
``categorical``; abuse: ``abuse`` (rate bursts, error probing), ``tokens``, ``injection``,
``duplicates`` (near-duplicate campaigns, extraction), over ``text``'s prompt features;
intended use: ``policy``. ``registry`` and ``config`` pick and configure them.
"""

from detectors.base import Alert, Detector, NullDetector

__all__ = ["Alert", "Detector", "NullDetector"]
