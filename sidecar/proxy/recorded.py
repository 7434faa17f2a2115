"""What the request path records about a request before any privacy profile applies.

Every event carries the request's path, trace id and request id, under every profile
(``metadata-only`` included), so none of them may carry personal data or secrets:

- ``path``: the raw (still percent-encoded) path without its query, each segment kept
  only when it reads as an identifier (a model name, a version, ``infer``); any other
  segment (an e-mail, a long number, anything encoded, a token) becomes ``*``. The
  decoded path could smuggle a query back in (``%3F``), and a custom API can put a
  user's address in a segment.
- ``trace_id``: a W3C trace id only: 32 lower-case hex digits, not all zero.
- ``request_id``: kept only when it is an id (letters, digits, ``.``, ``_``, ``:``,
  ``-``; at most 128), never free text.

>>> safe_path("/v2/models/resnet-50/versions/3/infer")
'/v2/models/resnet-50/versions/3/infer'
>>> safe_path("/v1/users/alice%40example.com/chat%3Fapi_key=abc?x=1")
'/v1/users/*/*'
>>> safe_path("/v1/accounts/4111111111111111/score")
'/v1/accounts/*/score'
>>> safe_path("http://public.example/v1/models?x=1")
'/v1/models'
>>> trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
'4bf92f3577b34da6a3ce929d0e0e4736'
>>> trace_id("00-sk_live_0123456789abcdefghijklmn-00f067aa0ba902b7-01") is None
True
>>> request_id("req-7"), request_id("user=alice@example.com")
('req-7', None)
"""

from __future__ import annotations

import re
from functools import lru_cache

SEGMENT_MAX = 40  # longer than model names get; a token or a key is longer
_SEGMENT = re.compile(r"[A-Za-z0-9._~:-]*")
_DIGIT_RUN = re.compile(r"[0-9]{6}")  # phone numbers, card numbers, national ids
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


PATH_CACHED_MAX = 256  # longer paths are worked out each time, not kept


def safe_path(raw_path: str) -> str:
    path = raw_path.partition("?")[0]
    return _safe(path) if len(path) <= PATH_CACHED_MAX else _safe.__wrapped__(path)


@lru_cache(maxsize=4096)  # paths repeat: one split per distinct path (query cut off first)
def _safe(path: str) -> str:
    _, sep, rest = path.partition("://")
    if sep and not path.startswith("/"):  # absolute form: the path only, as upstream gets
        path = "/" + rest.partition("/")[2]
    return "/".join(segment if _identifier(segment) else "*" for segment in path.split("/"))


def _identifier(segment: str) -> bool:
    return (len(segment) <= SEGMENT_MAX and _SEGMENT.fullmatch(segment) is not None
            and _DIGIT_RUN.search(segment) is None)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, if it is well formed."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or not _TRACE_ID.fullmatch(parts[1]) or parts[1] == "0" * 32:
        return None
    return parts[1]


def request_id(value: str | None) -> str | None:
    return value if value is not None and _REQUEST_ID.fullmatch(value) else None
