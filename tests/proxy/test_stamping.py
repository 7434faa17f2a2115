"""Every response the sidecar returns carries the four stamp headers, whatever its kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import aiohttp
import pytest

from sidecar.telemetry import STAMP_HEADERS

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_stamped(headers: Any, expected_status: int | None = None) -> str:
    assert headers.get("x-model-version") == "1.2.3"
    assert headers.get("x-policy-version") == "pol-9"
    assert headers.get("x-evidence-bundle-id") == "eb-42"
    iid = headers.get("x-inference-id")
    assert iid is not None and len(iid) == 36 and iid[14] == "7"  # UUIDv7
    for name in STAMP_HEADERS:
        assert len(headers.getall(name)) == 1, f"{name} must be set once, not appended"
    return str(iid)


CASES = [
    ("POST", "/v1/chat/completions", CHAT, 200, "ok"),
    ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, 200, "ok"),
    ("POST", "/v2/models/resnet/infer", {"inputs": [{"name": "x", "shape": [2],
                                                     "datatype": "FP32", "data": [1, 2]}]},
     200, "ok"),
    ("GET", "/v1/models", None, 200, "ok"),
    ("GET", "/error/500", None, 500, "upstream_error"),
    ("GET", "/error/429", None, 429, "upstream_error"),
    ("GET", "/no-such-route", None, 404, "upstream_error"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "outcome"), CASES)
async def test_upstream_responses_are_stamped_and_recorded(
    sidecar: Any, client: aiohttp.ClientSession, method: str, path: str, body: Any,
    status: int, outcome: str,
) -> None:
    async with client.request(method, sidecar.url + path, json=body) as response:
        await response.read()
        assert response.status == status
        iid = assert_stamped(response.headers)
    (event,) = await sidecar.validated_events(1)
    assert event["inference_id"] == iid
    assert event["status"] == status
    assert event["outcome"] == outcome
    assert event["model_version"] == "1.2.3" and event["evidence_bundle_id"] == "eb-42"


async def test_upstream_error_body_passes_through_unchanged(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    async with client.get(sidecar.url + "/error/503") as response:
        assert response.status == 503
        assert await response.json() == {"error": {"message": "model failed", "code": 503}}


async def test_upstream_error_body_replaced_when_configured(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(replace_upstream_errors="true")
    async with client.get(sc.url + "/error/503") as response:
        body = await response.json()
        iid = assert_stamped(response.headers)
    assert response.status == 503
    assert body["error"] == "upstream_error" and body["inference_id"] == iid


async def test_client_cannot_forge_stamp_headers(
    sidecar: Any, client: aiohttp.ClientSession, upstream: Any
) -> None:
    forged = {"x-model-version": "evil", "x-inference-id": "evil", "x-policy-version": "evil"}
    async with client.post(sidecar.url + "/echo-headers", headers=forged) as response:
        seen = await response.json()
        iid = assert_stamped(response.headers)
    # The upstream got the sidecar's id, not the client's, and no forged stamps;
    # the upstream's own forged stamp headers did not reach the client either.
    assert seen.get("x-inference-id") == iid
    assert "x-model-version" not in {k.lower() for k in seen}
    assert response.headers["x-model-version"] == "1.2.3"


async def test_hop_by_hop_headers_are_not_forwarded(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    headers = {"Connection": "keep-alive, X-Private", "X-Private": "1", "TE": "trailers",
               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
               "tracestate": "vendor=1", "x-request-id": "req-7"}
    async with client.get(sidecar.url + "/echo-headers", headers=headers) as response:
        seen = {k.lower(): v for k, v in (await response.json()).items()}
        assert "x-hop" not in {k.lower() for k in response.headers}
        assert "keep-alive" not in {k.lower() for k in response.headers}
    assert "x-private" not in seen and "te" not in seen
    assert seen["traceparent"].startswith("00-4bf92f35")
    assert seen["tracestate"] == "vendor=1" and seen["x-request-id"] == "req-7"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["via"] == "1.1 inference-sidecar"  # RFC 9110 §7.6.3
    (event,) = await sidecar.validated_events(1)
    assert event["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event["request_id"] == "req-7"


async def test_header_bytes_pass_unchanged_and_forwarding_headers_stay_single(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    """UTF-8 header bytes both ways, one value per X-Forwarded-* header (the proxy in
    front keeps its proto and host; the client address is appended to the one list), no
    Proxy-* field either way."""
    headers = [("X-Name", "Jos\u00e9 5\u20ac"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Host", "public.example"), ("X-Forwarded-For", "203.0.113.7"),
               ("X-Forwarded-For", "10.0.0.1"), ("Proxy-Token", "p"),
               ("Via", "1.1 edge"), ("Via", "2 mesh")]
    async with client.get(sidecar.url + "/echo-headers", headers=headers) as response:
        seen = await response.json()
        assert response.headers["content-disposition"] == 'attachment; filename="caf\u00e9.txt"'
        assert "proxy-authentication-info" not in response.headers
    assert seen["x-name"] == "Jos\u00e9 5\u20ac"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "public.example"
    assert seen["x-forwarded-for"] == "203.0.113.7, 10.0.0.1, 127.0.0.1"
    assert seen["via"] == "1.1 edge, 2 mesh, 1.1 inference-sidecar"
    assert "proxy-token" not in seen


async def test_via_names_the_clients_protocol_version(sidecar: Any) -> None:
    """An HTTP/1.0 request is forwarded as HTTP/1.1, and its Via entry says what the
    sidecar received (RFC 9110 §7.6.3: the received protocol)."""
    port = int(sidecar.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /echo-headers HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)  # 1.0 without keep-alive: closed
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], head[:80]
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    assert seen["via"] == "1.0 inference-sidecar"
    await sidecar.validated_events(1)


async def test_recorded_path_trace_and_request_ids_carry_no_personal_data(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    """Every event, under every profile, records these: they must not copy what a client
    put in them. The upstream still gets everything as it was sent."""
    secret = "sk_live_0123456789abcdefghijklmn"
    headers = {"traceparent": f"00-{secret}-00f067aa0ba902b7-01",
               "x-request-id": "user=alice.smith@example.com ssn=078-05-1120"}
    url = sidecar.url + "/echo-headers/alice.smith%40example.com/4111111111111111/x%3Fkey=v"
    async with client.get(url, headers=headers) as response:
        seen = {k.lower(): v for k, v in (await response.json()).items()}
    assert seen["traceparent"] == headers["traceparent"]
    assert seen["x-request-id"] == headers["x-request-id"]
    (event,) = await sidecar.validated_events(1)
    assert event["path"] == "/echo-headers/*/*/*"
    assert event["trace_id"] is None and event["request_id"] is None
    for value in ("alice", "example", "4111", "078-05", "sk_live", "key=v"):
        assert value not in str(event)


async def test_sidecar_errors_are_stamped(
    make_sidecar: Any, client: aiohttp.ClientSession, upstream: Any
) -> None:
    sc = await make_sidecar(max_body_bytes="1KiB", read_timeout="300ms")
    async with client.post(sc.url + "/text", data=b"x" * 4096) as response:
        body = await response.json()
        iid = assert_stamped(response.headers)
    assert response.status == 413 and body == {
        "error": "body_too_large", "message": body["message"], "inference_id": iid}
    async with client.get(sc.url + "/hang") as response:
        assert response.status == 504
        assert (await response.json())["error"] == "upstream_timeout"
        assert_stamped(response.headers)
    events = await sc.validated_events(2)
    assert [(e["status"], e["outcome"]) for e in events] == [(413, "rejected"), (504, "timeout")]


async def test_upstream_down_gives_stamped_502(
    make_sidecar: Any, client: aiohttp.ClientSession, unused_port: int
) -> None:
    sc = await make_sidecar(upstream_url=f"http://127.0.0.1:{unused_port}")
    async with client.post(sc.url + "/v1/chat/completions", json=CHAT) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "upstream_unavailable"
        assert_stamped(response.headers)
    (event,) = await sc.validated_events(1)
    assert event["outcome"] == "upstream_error" and event["upstream_status"] is None


async def test_upstream_reset_gives_stamped_502(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    async with client.get(sidecar.url + "/reset") as response:
        assert response.status == 502
        assert_stamped(response.headers)


async def test_stamp_body_adds_object_with_correct_length(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(stamp_body="true", stamp_body_key="audit")
    async with client.post(sc.url + "/v1/chat/completions", json=CHAT) as response:
        raw = await response.read()
        iid = assert_stamped(response.headers)
        assert int(response.headers["Content-Length"]) == len(raw)
    body = json.loads(raw)
    assert body["audit"] == {"model_version": "1.2.3", "policy_version": "pol-9",
                             "evidence_bundle_id": "eb-42", "inference_id": iid}
    assert body["choices"][0]["message"]["content"] == "You said: hi"
    # Streams and non-JSON bodies keep their bytes.
    async with client.post(sc.url + "/text", data=b"abc") as response:
        assert await response.read() == b"ABC"
    async with client.post(sc.url + "/v1/chat/completions",
                           json={**CHAT, "stream": True}) as response:
        text = (await response.read()).decode()
    assert "audit" not in text and text.endswith("data: [DONE]\n\n")


async def test_stamp_body_keeps_the_model_output_byte_for_byte(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    """The stamp is added, nothing else changes: an integer past 64 bits stays an integer,
    a document nested deeper than orjson writes still gets its 200 and its stamp."""
    sc = await make_sidecar(stamp_body="true")
    big = b'{"id": 123456789012345678901234567890, "x": 1.10}'
    deep = b'{"a": ' + b"[" * 300 + b"]" * 300 + b"}"
    # The upstream's own "compliance" key is replaced by re-serialising; a document too
    # deep for that passes through unstamped (before: a 500).
    too_deep = b'{"compliance": 1, "a": ' + b"[" * 300 + b"]" * 300 + b"}"
    async with client.post(sc.url + "/echo-json", data=too_deep) as response:
        assert response.status == 200 and await response.read() == too_deep
        assert_stamped(response.headers)
    for body in (big, deep, b"{}"):
        async with client.post(sc.url + "/echo-json", data=body) as response:
            assert response.status == 200
            raw = await response.read()
            iid = assert_stamped(response.headers)
        head, sep, stamp = raw.rpartition(b'"compliance":')
        assert sep and raw.startswith(body[:-1]) and head.rstrip(b",") == body[:-1]
        assert json.loads(stamp[:-1])["inference_id"] == iid


async def test_malformed_json_is_proxied_untouched_and_recorded(
    make_sidecar: Any, client: aiohttp.ClientSession
) -> None:
    sc = await make_sidecar(stamp_body="true")
    bad = b'{"messages": [ {"content": "unterminated'
    async with client.post(sc.url + "/echo-headers", data=bad,
                           headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
    async with client.post(sc.url + "/v1/chat/completions", data=bad,
                           headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400  # the model server's verdict, passed through
        assert (await response.json()) == {"error": {"message": "invalid JSON body"}}
        assert_stamped(response.headers)
    events = await sc.validated_events(2)
    assert events[1]["request_bytes"] == len(bad)


async def test_parse_errors_get_stamped_json_and_an_event(sidecar: Any) -> None:
    port = int(sidecar.url.rsplit(":", 1)[1])
    cases = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        # a header value that looks like a request target is still a header
        (b"GET / HTTP/1.1\r\nHost: x\r\nReferer: https://" + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Original-URL: /" + b"a" * 9000 + b"\r\n\r\n", 431),
    ]
    for raw, status in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        # aiohttp answers unparseable requests as HTTP/1.0: it never learnt the version.
        assert re.match(rb"HTTP/1\.[01] %d " % status, head), head[:80]
        lower = head.lower()
        for name in STAMP_HEADERS:
            assert name.encode() + b": " in lower
        assert json.loads(body)["error"]
    events = await sidecar.validated_events(len(cases))
    assert [e["status"] for e in events] == [s for _, s in cases]
    assert {e["outcome"] for e in events} == {"rejected"}


async def test_head_keeps_the_upstreams_content_length(
    sidecar: Any, upstream: Any, client: aiohttp.ClientSession
) -> None:
    # RFC 9110 §9.3.2: a HEAD response's Content-Length is the size GET would send
    async with client.get(upstream.url + "/v1/models") as direct:
        size = len(await direct.read())
    async with client.head(sidecar.url + "/v1/models") as response:
        assert response.status == 200
        assert response.headers.get("Content-Length") == str(size) != "0"
        assert_stamped(response.headers)
    (event,) = await sidecar.validated_events(1)
    assert event["method"] == "HEAD" and event["response_bytes"] == 0


@pytest.mark.parametrize("value", [
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "4012888888881881", "4012-8888-8888-1881", "AKIAIOSFODNN7EXAMPLE",
    "sk-AbCdEfGhIjKlMnOpQrStUvWx", "203.0.113.77", "212-555-0143", "536-22-8471",
    "DE89-3704-0044-0532-0130-00", "de89370400440532013000", "x_de89370400440532013000",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
], ids=["jwt", "card", "card-dashed", "aws-key", "openai-key", "ipv4", "phone", "ssn",
        "iban-dashed", "iban-lower", "iban-prefixed", "github-token"])
async def test_a_request_id_or_path_segment_holding_a_secret_is_not_recorded(
    sidecar: Any, client: aiohttp.ClientSession, value: str
) -> None:
    async with client.get(f"{sidecar.url}/v1/k/{value}/x",
                          headers={"x-request-id": value}) as response:
        assert response.status < 500
    (event,) = await sidecar.validated_events(1)
    assert event["path"] == "/v1/k/*/x" and event["request_id"] is None
    assert value not in str(event)


async def test_a_request_id_that_is_a_word_or_a_number_split_over_a_path_is_not_recorded(
    sidecar: Any, client: aiohttp.ClientSession
) -> None:
    # Words as model names are in a path's nature; in a request id they can only be what
    # the client chose to put there: a name, a device address.
    for value in ("jane-doe-1984", "aa-bb-cc-dd-ee-ff", "alice"):
        async with client.get(f"{sidecar.url}/v1/models", headers={"x-request-id": value}):
            pass
    async with client.get(f"{sidecar.url}/v1/cards/4111/1111/1111/1111"):
        pass
    events = await sidecar.validated_events(4)
    assert [e["request_id"] for e in events] == [None, None, None, None]
    assert events[-1]["path"] == "/v1/cards/4111/*/*/*"


@pytest.mark.parametrize("value", ["0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                                   "01ARZ3NDEKTSV4RRFFQ69G5FAV", "4bf92f3577b34da6a3ce929d",
                                   "req_7f3c9a0b1c2d3e4f5a6b7c8d9e0f1a2b",
                                   "req-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "req-7"])
async def test_a_request_id_in_a_usual_id_form_is_recorded(
    sidecar: Any, client: aiohttp.ClientSession, value: str
) -> None:
    async with client.get(sidecar.url + "/v1/models", headers={"x-request-id": value}):
        pass
    (event,) = await sidecar.validated_events(1)
    assert event["request_id"] == value


async def test_no_fields_the_model_server_did_not_send(make_sidecar: Any, upstream: Any,
                                                       client: aiohttp.ClientSession) -> None:
    """aiohttp fills in ``Server`` (its name and version) and an octet-stream
    ``Content-Type`` as an origin server would; a proxy forwards what the model server
    sent. Only ``Date`` is added (RFC 9110 §6.6.1), and the sidecar's own answers name
    no software."""
    replies = {
        b"/plain": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"/stream": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/error": b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            for _ in range(20):
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                writer.write(replies[path])
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        bare = await make_sidecar(upstream_url=f"http://127.0.0.1:{port}")
        for method, path in [("GET", "/plain"), ("GET", "/stream"), ("GET", "/empty"),
                             ("GET", "/error"), ("HEAD", "/plain")]:
            async with client.request(method, bare.url + path) as response:
                await response.read()
                names = {k.lower() for k in response.headers}
                assert_stamped(response.headers)
                assert "server" not in names and "content-type" not in names, (path, names)
                assert "date" in names
        async with client.post(bare.url + "/plain", data=b"x" * 64,  # the sidecar's own
                               headers={"Content-Length": str(100 * 1024**2)}) as response:
            assert response.status == 413
            assert "server" not in {k.lower() for k in response.headers}
        await bare.validated_events(6)
    finally:
        server.close()
        await server.wait_closed()
    # A model server's own Server and Content-Type pass through.
    plain = await make_sidecar()
    async with client.get(upstream.url + "/v1/models") as direct:
        sent_server = direct.headers["Server"]
    async with client.get(plain.url + "/v1/models") as response:
        assert response.headers.getall("Server") == [sent_server]
        assert response.headers["Content-Type"].startswith("application/json")
