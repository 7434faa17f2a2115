"""What the request path records about a request before any privacy profile applies.

Every event carries the request's path, trace id and request id, under every profile
(``metadata-only`` included), so none of them may carry personal data or secrets:

- ``path``: the raw (still percent-encoded) path without its query, each segment kept
  only when it reads as a route's word (a model name, a version, ``infer``: lower case,
  at most 5 digits, no IPv4 address, no vendor key prefix), and while the kept segments
  hold at most 6 digits in all (a number split over segments); any other segment (an
  e-mail, a number with separators, anything encoded, a token or key, upper case)
  becomes ``*``. The decoded path could smuggle a query back in (``%3F``), and a custom
  API can put a user's address or account in a segment.
- ``trace_id``: a W3C trace id only: 32 lower-case hex digits, not all zero.
- ``request_id``: kept only when it is a UUID, a ULID, a hex id (16 to 64 hex digits,
  some of them letters), any of these after a short prefix (``req_``), or a counter of
  at most 5 digits, prefixed or not (``req-7``); a client can put anything in it (a
  token, a card number, a name), so anything else is not recorded.

>>> safe_path("/v2/models/resnet-50/versions/3/infer")
'/v2/models/resnet-50/versions/3/infer'
>>> safe_path("/v1/users/alice%40example.com/chat%3Fapi_key=abc?x=1")
'/v1/users/*/*'
>>> safe_path("/v1/accounts/4111111111111111/score")
'/v1/accounts/*/score'
>>> safe_path("/v1/cards/4111/1111/1111/1111")
'/v1/cards/4111/*/*/*'
>>> safe_path("http://public.example/v1/models?x=1")
'/v1/models'
>>> trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
'4bf92f3577b34da6a3ce929d0e0e4736'
>>> trace_id("00-sk_live_0123456789abcdefghijklmn-00f067aa0ba902b7-01") is None
True
>>> safe_path("/v1/k/AKIAIOSFODNN7EXAMPLE/p/212-555-0143/ip/203.0.113.77/sk-abcdefghijklmnopqrst")
'/v1/k/*/p/*/ip/*/*'
>>> request_id("req-7"), request_id("user=alice@example.com")
('req-7', None)
>>> request_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"), request_id("4012888888881881")
('0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b', None)
>>> request_id("req_7f3c9a0b1c2d3e4f5a6b7c8d9e0f1a2b"), request_id("tok_4012888888881881")
('req_7f3c9a0b1c2d3e4f5a6b7c8d9e0f1a2b', None)
"""

from __future__ import annotations

import re
from functools import lru_cache

SEGMENT_MAX = 40  # longer than model names get; a token or a key is longer
DIGITS_MAX = 5  # phone, card, account and national id numbers have more, separated or not
PATH_DIGITS_MAX = 6  # in the segments a path keeps, all together
_SEGMENT = re.compile(r"[a-z0-9._~:-]*")  # keys, IBANs and tokens have upper case
_IPV4 = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}")
# vendor key prefixes (sidecar/privacy/recognizers.py) that can be all lower case
_KEY_PREFIXES = ("sk-", "sk_", "rk_", "pk_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                 "github_pat_", "xox", "hf_", "glpat-", "aiza", "akia", "asia", "eyj")
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_PREFIX = re.compile(r"[A-Za-z]{1,8}[_-]")
# a counter, perhaps prefixed ("req-7"); not any word: "jane-doe-1984" is a name
_SHORT_ID = re.compile(r"(?:[A-Za-z]{1,8}[_-])?[0-9]{1,5}")
_REQUEST_ID = re.compile(
    r"(?:[A-Za-z]{1,8}[_-])?(?:"  # a short prefix, as "req_" (OpenAI), "req-"
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|[0-7][0-9A-HJKMNP-TV-Z]{25}"  # ULID
    r"|(?=[0-9a-f]*[a-f])[0-9a-f]{16,64})"  # hex, with a letter (not a long number)
)


PATH_CACHED_MAX = 256  # longer paths are worked out each time, not kept


def safe_path(raw_path: str) -> str:
    path = raw_path.partition("?")[0]
    return _safe(path) if len(path) <= PATH_CACHED_MAX else _safe.__wrapped__(path)


@lru_cache(maxsize=4096)  # paths repeat: one split per distinct path (query cut off first)
def _safe(path: str) -> str:
    _, sep, rest = path.partition("://")
    if sep and not path.startswith("/"):  # absolute form: the path only, as upstream gets
        path = "/" + rest.partition("/")[2]
    kept: list[str] = []
    digits = 0  # across segments too: /cards/4111/1111/1111/1111 is one number
    for segment in path.split("/"):
        if _identifier(segment):
            digits += sum(c.isdigit() for c in segment)
            if digits <= PATH_DIGITS_MAX:
                kept.append(segment)
                continue
        kept.append("*")
    return "/".join(kept)


def _identifier(segment: str) -> bool:
    return (len(segment) <= SEGMENT_MAX and _SEGMENT.fullmatch(segment) is not None
            and sum(c.isdigit() for c in segment) <= DIGITS_MAX
            and _IPV4.search(segment) is None and segment.count(":") < 2  # IPv6 too
            and not segment.startswith(_KEY_PREFIXES))


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, if it is well formed."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    if len(parts) < 4 or not _TRACE_ID.fullmatch(parts[1]) or parts[1] == "0" * 32:
        return None
    return parts[1]


def request_id(value: str | None) -> str | None:
    if value is None or not (_REQUEST_ID.fullmatch(value) or _SHORT_ID.fullmatch(value)):
        return None
    return None if _iban(value) or _iban(_PREFIX.sub("", value, count=1)) else value


def _iban(value: str) -> bool:
    """Whether ``value`` passes the IBAN check (ISO 13616 mod 97): a lower-case IBAN can
    read as a hex id.

    >>> _iban("de89370400440532013000"), _iban("de89370400440532013001")
    (True, False)
    """
    if not 15 <= len(value) <= 34 or not value[:2].isalpha() or not value[2:4].isdigit():
        return False
    moved = (value[4:] + value[:4]).upper()
    if not moved.isalnum() or not moved.isascii():
        return False
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
