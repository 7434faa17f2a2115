"""The sidecar's exceptions, and how each becomes a status code and an event outcome.

    SidecarError                  (a local, stamped JSON reply while headers are unsent)
    ├── RequestRejected           the request broke a limit: 413, 414, 431, 408, 400
    ├── UpstreamError
    │   ├── UpstreamUnavailable   refused, reset, DNS, closed early: 502
    │   └── UpstreamTimeout       connect, headers, idle or total timeout: 504
    └── Overloaded                the sidecar cannot take the request: 503

Third-party errors (aiohttp, asyncio) are mapped to these at the boundary, in
``sidecar.proxy.upstream``; nothing above it catches aiohttp exceptions.
"""

from __future__ import annotations

from typing import Final

OUTCOME_OK: Final = "ok"
OUTCOME_UPSTREAM_ERROR: Final = "upstream_error"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_REJECTED: Final = "rejected"
OUTCOME_CLIENT_DISCONNECTED: Final = "client_disconnected"
OUTCOME_ABORTED: Final = "aborted"  # cancelled by the sidecar's own shutdown
OUTCOMES: Final = (
    OUTCOME_OK,
    OUTCOME_UPSTREAM_ERROR,
    OUTCOME_TIMEOUT,
    OUTCOME_REJECTED,
    OUTCOME_CLIENT_DISCONNECTED,
    OUTCOME_ABORTED,
)


class SidecarError(Exception):
    status: int = 500
    outcome: str = OUTCOME_UPSTREAM_ERROR
    code: str = "internal_error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class RequestRejected(SidecarError):
    status = 400
    outcome = OUTCOME_REJECTED
    code = "bad_request"


class UpstreamError(SidecarError):
    status = 502
    outcome = OUTCOME_UPSTREAM_ERROR
    code = "upstream_unavailable"


class UpstreamUnavailable(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    status = 504
    outcome = OUTCOME_TIMEOUT
    code = "upstream_timeout"


class Overloaded(SidecarError):
    status = 503
    outcome = OUTCOME_REJECTED
    code = "overloaded"
