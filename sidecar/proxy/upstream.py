"""The upstream stage: requests to the model server over a keep-alive pool (``pool.py``).

``pool.py`` is the boundary where socket, parser and timer errors become
``sidecar.errors``; this module decides what is sent.
Headers are rewritten per RFC 9110 §7.6.1: hop-by-hop fields (and any the
``Connection`` header names) are removed in both directions; trace context and
``x-request-id`` pass through; stamp headers a client sent are never forwarded.
The request gains a ``Via`` entry (RFC 9110 §7.6.3: a gateway must add one to the
requests it forwards), so the model server and anything between can tell a request
came through the sidecar, and a forwarding loop shows in the list.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import Settings
from sidecar.errors import RequestRejected
from sidecar.proxy.pool import Pool, UpstreamResponse
from sidecar.telemetry import HEADER_INFERENCE_ID, STAMP_HEADERS

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed from the bytes we send; forwarding the client's could contradict them. The
# body is complete before it is sent, so a client's "Expect: 100-continue" is answered
# already (by filters.read_request_body) and must not make the model server wait.
_REQUEST_DROP = HOP_BY_HOP | {"host", "content-length", "expect", *STAMP_HEADERS}
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_RESPONSE_DROP = HOP_BY_HOP | {"content-length", *STAMP_HEADERS}
VIA_NAME = "inference-sidecar"  # a pseudonym: no host name or version goes upstream


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], drop: frozenset[str]
) -> CIMultiDict[str]:
    """Copy ``headers`` without hop-by-hop fields, ``Proxy-*`` fields (they concern the
    connection to a proxy) and the names in ``drop``.

    >>> h = CIMultiDict([("Connection", "close, X-Secret"), ("X-Secret", "1"), ("A", "b"),
    ...                  ("Proxy-Authentication-Info", "x")])
    >>> list(end_to_end(h, HOP_BY_HOP).items())
    [('A', 'b')]
    """
    if "connection" in headers:
        drop = drop | _connection_tokens(headers)
    return CIMultiDict([(k, v) for k, v in headers.items()
                        if (name := k.lower()) not in drop and not name.startswith("proxy-")])


def request_headers(
    headers: CIMultiDictProxy[str], inference_id: str, client: str | None, target: str = "",
    version: tuple[int, int] = (1, 1),
) -> CIMultiDict[str]:
    """What the upstream gets: end-to-end headers, the sidecar's inference id (so the
    model server can log the same id), the X-Forwarded-* trio and ``Via`` (the client's
    protocol version, then ``VIA_NAME``, appended to the list any proxy before started).

    As a proxy that is not the edge (an ingress or a mesh is in front of the pod), the
    sidecar keeps the proto and host the proxy before it set, adding its own only when
    there are none, and appends the client address to the one X-Forwarded-For list (all
    of a client's X-Forwarded-For fields merged): one value each, never a second one a
    first-value reader would miss."""
    out = end_to_end(headers, _REQUEST_DROP)
    extra = [(HEADER_INFERENCE_ID, inference_id)]
    if "x-forwarded-proto" not in out:
        extra.append(("x-forwarded-proto", "http"))
    host = headers.get("host")
    if target and not target.startswith("/"):  # absolute form: its authority is the host
        host = urlsplit(target).netloc or host  # (RFC 9112 §3.2.2)
    if host is not None and "x-forwarded-host" not in out:
        extra.append(("x-forwarded-host", host))
    if client:
        prior = ", ".join(out.popall("x-forwarded-for", ()))
        extra.append(("x-forwarded-for", f"{prior}, {client}" if prior else client))
    via = f"{version[0]}.{version[1]} {VIA_NAME}"
    prior_via = ", ".join(out.popall("via", ()))
    extra.append(("via", f"{prior_via}, {via}" if prior_via else via))
    out.extend(extra)
    return out


def response_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    return end_to_end(headers, _RESPONSE_DROP)


class Upstream:
    """The model server. Created once per process; ``start()`` inside a running loop."""

    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.upstream_url)
        self._settings = settings
        self._host = parts.hostname or "localhost"
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._pool: Pool | None = None

    async def start(self) -> None:
        s = self._settings
        self._pool = Pool(self._host, self._port, s.upstream_max_connections,
                          connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                          idle_timeout=s.idle_timeout, total_timeout=s.total_timeout,
                          tls=self._tls)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def send(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: bytes
    ) -> UpstreamResponse:
        """Send the request; return the response once its head has arrived. The caller
        must ``finish`` it."""
        assert self._pool is not None, "Upstream.start() was not awaited"
        if not path_qs.startswith("/"):
            path_qs = origin_form(path_qs)
        elif "#" in path_qs:  # no part of an origin-form target (RFC 9112 §3.2)
            path_qs = path_qs.partition("#")[0]
        return await self._pool.request(method, self.head(method, path_qs, headers, body), body)

    def head(self, method: str, path_qs: str, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The request line and header block, encoded once. Header names and values come
        from a parsed request or from the sidecar, so they hold no CR or LF. aiohttp
        decoded the client's bytes as UTF-8 with surrogate escapes: encoding the same way
        forwards them unchanged (Latin-1 turned "Jos\xc3\xa9" into "Jos\xe9", and failed
        on "\xe2\x82\xac")."""
        lines = [f"{method} {self._prefix}{path_qs} HTTP/1.1", f"Host: {self._host_header}"]
        lines.extend([f"{name}: {value}" for name, value in headers.items()])
        if body or method not in _NO_BODY_METHODS:
            lines.append(f"Content-Length: {len(body)}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def origin_form(target: str) -> str:
    """The path and query of an absolute-form request target, which a server must accept
    (RFC 9112, 3.2.2); anything else (``*``, authority-form) is a 400.

    >>> origin_form("http://model:8000/v1/models?x=1"), origin_form("https://h")
    ('/v1/models?x=1', '/')
    """
    parts = urlsplit(target)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise RequestRejected("the request target must be a path", code="bad_request_target")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def finish(response: UpstreamResponse, failed: bool) -> None:
    """Return the connection to the pool, or drop it after a failure or a cancel (its
    state is unknown, so it must never be reused)."""
    response.release(failed)
