"""The event pipeline: bounded queue → (privacy, detectors: to come) → sink, off the loop."""
