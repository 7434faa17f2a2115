"""inference-sidecar: the compliance runtime that sits beside a high-risk model server."""

__version__ = "0.1.0"
