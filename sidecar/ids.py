"""Inference ids: UUIDv7 (RFC 9562), unique and time-ordered, so ids sort like the events."""

from __future__ import annotations

import uuid_utils


def new_inference_id() -> str:
    """Return a fresh UUIDv7 string.

    >>> a, b = new_inference_id(), new_inference_id()
    >>> a != b and a[14] == "7" and len(a) == 36
    True
    """
    return str(uuid_utils.uuid7())
