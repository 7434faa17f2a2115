"""``inference-sidecar detect``: the detectors as a Kafka consumer group over the events
topic; alerts go to the alerts topic.

Events are keyed by the client's pseudonym, so a client's events share a partition
whichever replica served them: its member's per-client detectors (rates, errors,
extraction, tokens) see all of it. Global ones (drift, near-duplicates, the global rate)
see their member's partitions: with N members, about 1/N of the traffic each.

- ``ai.inference.completed`` CloudEvents go to the detectors (their ``data``); other types
  are skipped; anything else is counted as malformed and skipped, never a crash.
- Alerts (``notices.alert_events``) go out through the sidecar's own Kafka sink (idempotent,
  ``acks=all``, same TLS/SASL settings). Enforce-mode detectors run too: they only alert.
- At-least-once: a batch's offsets are committed once all its alerts are acknowledged.
  A batch read again (after a crash, or a commit refused at a rebalance) raises the same
  alerts with the same ids (``<inference id>/<detector>``): consumers de-duplicate by id.
- Detector state lives in this process's memory only: a partition that moves to another
  member at a rebalance, or a restarted member, starts its clients from no state
  (baselines re-learn; a burst straddling the move can go unseen).
- Stops on SIGTERM/SIGINT after the batch in hand, or per ``--max-events``/``--idle-exit``
  (idle with no bootstrap address answering is a failure, exit 1).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import orjson

from sidecar.events.cloudevents import to_record
from sidecar.events.notices import alert_events
from sidecar.logs import configure_logging, get_logger
from sidecar.sinks.base import SinkError
from sidecar.telemetry import EVENT_TYPE_INFERENCE

if TYPE_CHECKING:  # the detectors (river, scipy) and kafka-python load in run(): the CLI
    from detectors.registry import DetectorSet  # imports this module for every command
    from sidecar.events.record import Record
    from sidecar.sinks.kafka import KafkaSink

log = get_logger("detect")

DESCRIPTION: Final = "Run the detectors as a Kafka consumer group over the events topic."
CLIENT_ID: Final = "inference-sidecar-detect"
POLL_MS: Final = 200  # how often a stop request and the idle clock are looked at
POLL_RECORDS: Final = 500
RETRY_FOR_S: Final = 120.0  # alerts unacknowledged this long: exit 1, batch not committed
MALFORMED_LOGGED: Final = 20  # then only counted
SHARED_CONFIG: Final = (  # what the consumer takes from the producer's settings
    "bootstrap_servers", "security_protocol", "ssl_check_hostname", "ssl_cafile", "ssl_certfile",
    "ssl_keyfile", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "request_timeout_ms", "bootstrap_timeout_ms", "reconnect_backoff_max_ms")
START_HELP: Final = (
    "Where a group with no committed offset starts (a new group, or offsets expired); "
    "committed offsets always win. Default earliest: a security review expects every "
    "recorded inference judged, including those recorded before the detectors first ran; "
    "alerts carry the inference's time and deterministic ids, so catching up is harmless, "
    "and history warms the baselines. latest: judge only traffic from now on.")


def _positive(kind: type[int] | type[float], minimum: float = 0.0) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)  # ValueError: argparse says "invalid int value"
        if not (minimum < value < math.inf):  # nan and inf too: never true for nan
            raise argparse.ArgumentTypeError(
                f"must be a finite number > {minimum:g}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--bootstrap", required=True, metavar="HOST:PORT[,...]")
    add("--group", required=True, metavar="NAME",
        help="Consumer group: its members share the partitions and the committed offsets.")
    add("--events-topic", default="inference.events", metavar="TOPIC")
    add("--alerts-topic", default="inference.alerts", metavar="TOPIC")
    add("--detectors", metavar="FILE", help="Detectors file (YAML); default: the shipped set.")
    add("--start", choices=("earliest", "latest"), default="earliest", help=START_HELP)
    add("--max-events", type=_positive(int), metavar="N", help="Stop after reading N records.")
    add("--idle-exit", type=_positive(float), metavar="SECONDS", help="Stop after this long "
        "with nothing new, counted from the start and from each rebalance (allow for a group "
        "join, a few seconds); with no broker reachable by then, exit 1. Default: run "
        "until signalled.")
    # Above 0.3 s: heartbeats go every third of it, and at least 100 ms apart.
    add("--session-timeout", type=_positive(float, 0.3), default=10.0, metavar="SECONDS",
        help="How long the group waits for a silent member before moving its partitions.")
    add("--delivery-timeout", type=_positive(float), default=30.0, metavar="SECONDS",
        help="Per alerts batch, as in the sidecar; Kafka requests (and connecting at start) "
             "time out after a third of it, at most 10 s.")
    add("--log-level", default="info", choices=("debug", "info", "warning"))
    tls = parser.add_argument_group("TLS and SASL (secrets are files, never flags)")
    tls.add_argument("--security-protocol", default="PLAINTEXT",
                     help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    tls.add_argument("--sasl-mechanism", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    for name in ("ssl-cafile", "ssl-certfile", "ssl-keyfile", "sasl-username-file",
                 "sasl-password-file"):
        tls.add_argument(f"--{name}", metavar="FILE")


def add_parser(subparsers: Any) -> None:
    """Add the ``detect`` subcommand (``run(args)`` runs it)."""
    add_options(subparsers.add_parser("detect", help=DESCRIPTION, description=DESCRIPTION))


@dataclass
class Stats:
    records: int = 0
    events: int = 0
    skipped: int = 0
    malformed: int = 0
    alerts: Counter[str] = field(default_factory=Counter)  # acknowledged, by detector

    def line(self) -> str:
        by = ", ".join(f"{name}={n}" for name, n in sorted(self.alerts.items()))
        return (f"inference-sidecar detect: {self.records} records: {self.events} events, "
                f"{self.skipped} skipped, {self.malformed} malformed; "
                f"alerts: {sum(self.alerts.values())}" + (f" ({by})" if by else ""))


def _consumer(args: argparse.Namespace, config: dict[str, Any]) -> Any:
    """A subscribed consumer, or ``SinkError`` (closing what a failed constructor leaks)."""
    from kafka import KafkaConsumer  # type: ignore[import-untyped]

    from sidecar.sinks.kafka_config import KafkaNetClient

    clients: list[Any] = []

    def client_factory(**kwargs: Any) -> Any:
        clients.append(KafkaNetClient(**kwargs))
        return clients[-1]

    session_ms = int(args.session_timeout * 1000)
    shared = {key: config[key] for key in SHARED_CONFIG if key in config}
    try:
        consumer = KafkaConsumer(
            **shared, kafka_client=client_factory, client_id=CLIENT_ID, group_id=args.group,
            enable_auto_commit=False, auto_offset_reset=args.start,
            session_timeout_ms=session_ms, heartbeat_interval_ms=max(session_ms // 3, 100),
            fetch_max_wait_ms=min(500, shared["request_timeout_ms"] // 2),
            max_poll_records=POLL_RECORDS)
    except Exception as exc:
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        raise SinkError(f"kafka: cannot connect to {args.bootstrap}: {str(exc)[:300]}") from None
    consumer.subscribe([args.events_topic])
    return consumer


def _alerts(record: Any, detectors: DetectorSet, stats: Stats) -> list[tuple[str, Record]]:
    """The alerts (detector name, record) one consumed record raises; counts the record."""
    stats.records += 1
    envelope: Any = None
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        envelope = orjson.loads(record.value)
    kind = envelope.get("type") if isinstance(envelope, dict) else None
    data = envelope.get("data") if isinstance(envelope, dict) else None
    if isinstance(kind, str) and kind != EVENT_TYPE_INFERENCE:
        stats.skipped += 1
        return []
    if not isinstance(kind, str) or not isinstance(data, dict):
        stats.malformed += 1
        if stats.malformed <= MALFORMED_LOGGED:  # where, never what
            log.warning("malformed record skipped", extra={"fields": {
                "partition": record.partition, "offset": record.offset}})
        return []
    stats.events += 1
    alerts = detectors.update(data)
    return [(alert.detector, to_record(notice, 0))
            for alert, notice in zip(alerts, alert_events(alerts, data), strict=True)]


def _deliver(sink: KafkaSink, records: list[Record], stop: threading.Event) -> bool:
    """Write until acknowledged; False after ``RETRY_FOR_S`` or a stop request."""
    deadline, backoff = time.monotonic() + RETRY_FOR_S, 0.5
    while records:
        try:
            sink.write(records)
            return True
        except SinkError as exc:
            log.warning("alerts not acknowledged", extra={"fields": {
                "alerts": len(records), "reason": str(exc)}})
            if stop.is_set() or time.monotonic() + backoff > deadline:
                return False
            stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
    return True


def _consume(consumer: Any, sink: KafkaSink, detectors: DetectorSet, args: argparse.Namespace,
             stop: threading.Event, stats: Stats) -> int:
    from kafka.errors import KafkaError  # type: ignore[import-untyped]
    from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]

    from sidecar.sinks.kafka import probe

    last_new, seen = time.monotonic(), (-1, frozenset[int]())
    while not stop.is_set():
        limit = POLL_RECORDS if args.max_events is None else args.max_events - stats.records
        if limit <= 0:
            break
        polled = consumer.poll(timeout_ms=POLL_MS, max_records=min(limit, POLL_RECORDS))
        # The generation can change a poll before the assignment that goes with it arrives.
        now = (consumer.group_metadata().generation_id,
               frozenset(p.partition for p in consumer.assignment()))
        if now != seen:
            seen, last_new = now, time.monotonic()  # a rebalance: the idle clock restarts
            log.info("partitions assigned", extra={"fields": {"generation": now[0],
                     "partitions": sorted(now[1])}})
        if not polled:
            if args.idle_exit is not None and time.monotonic() - last_new >= args.idle_exit:
                # Nothing new, or nobody to ask? kafka-python's poll() says neither; a
                # broker that went away is a failure (exit 1), not the end of the stream.
                probe(sink.settings)
                break
            continue
        alerts: list[tuple[str, Record]] = []
        offsets = {}
        for partition, records in polled.items():
            for record in records:
                alerts.extend(_alerts(record, detectors, stats))
            offsets[partition] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        if not _deliver(sink, [record for _, record in alerts], stop):
            print(f"inference-sidecar: kafka: {len(alerts)} alerts not acknowledged; their "
                  "batch was not committed and will be read again", file=sys.stderr)
            return 1
        stats.alerts.update(name for name, _ in alerts)
        try:
            consumer.commit(offsets=offsets, timeout_ms=consumer.config["request_timeout_ms"])
        except KafkaError as exc:  # CommitFailedError: the group rebalanced
            log.warning("offsets not committed: the batch will be read again", extra={
                "fields": {"reason": str(exc)[:300]}})
        last_new = time.monotonic()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``detect``; exit status 0, 1 (Kafka failed: unreachable, alerts unacknowledged)
    or 2 (configuration). A summary line on stderr at exit."""
    from detectors.config import DetectorConfigError, load_config
    from detectors.registry import DetectorSet
    from sidecar.sinks import kafka_config as kc
    from sidecar.sinks.kafka import KafkaSink, create_producer

    try:
        config = load_config(args.detectors)
        settings = kc.KafkaSettings(
            bootstrap=args.bootstrap, topic=args.events_topic, alerts_topic=args.alerts_topic,
            delivery_timeout_s=args.delivery_timeout, **{name: getattr(args, name) for name in (
                "security_protocol", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
                "sasl_mechanism", "sasl_username_file", "sasl_password_file")})
        kc.check_files(settings)
    except (DetectorConfigError, SinkError, ValueError) as exc:
        problem = str(exc)
        if type(exc) is ValueError:  # from KafkaSettings, naming a field: name the flag
            name, _, reason = problem.partition(": ")
            flag = "events-topic" if name == "topic" else name.removesuffix("_s").replace("_", "-")
            problem = f"--{flag}: {reason}"
        print(f"inference-sidecar: config error: {problem}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    detectors, stats = DetectorSet(config.specs, config.digest), Stats()
    stop, previous = threading.Event(), {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, lambda *_: stop.set())
                    for signum in (signal.SIGTERM, signal.SIGINT)}
    consumer, sink = None, None
    try:
        kafka_config = {**kc.producer_config(settings, kc.read_credentials(settings)),
                        "client_id": CLIENT_ID}
        ready = [create_producer(settings, kafka_config)]  # fails fast: no broker, bad TLS
        sink = KafkaSink(settings, lambda s, c: ready.pop() if ready else create_producer(s, c))
        consumer = _consumer(args, kafka_config)
        log.info("detect started", extra={"fields": {"detectors": config.source, **{
            name: getattr(args, name) for name in ("group", "events_topic", "alerts_topic")}}})
        status = _consume(consumer, sink, detectors, args, stop, stats)
    except (SinkError, kc.kafka_errors.KafkaError) as exc:
        prefix = "" if isinstance(exc, SinkError) else "kafka: "
        print(f"inference-sidecar: {prefix}{str(exc)[:300]}", file=sys.stderr)
        status = 1
    finally:
        if consumer is not None:
            with contextlib.suppress(Exception):
                consumer.close(autocommit=False)  # leaves the group: partitions move at once
        if sink is not None:
            sink.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("detect stopped", extra={"fields": {
        **vars(stats), "alerts": dict(stats.alerts), "status": status,
        "detector_errors": {k: v for k, v in detectors.errors.items() if v},
        "detector_evictions": detectors.take_evictions()}})
    print(stats.line(), file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inference-sidecar detect", description=DESCRIPTION)
    add_options(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
