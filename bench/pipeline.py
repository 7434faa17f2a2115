"""Benchmark of the event pipeline: file sink vs Kafka sink, per durability mode, and how
fast a write-ahead log backlog drains to the broker.

    .venv/bin/python bench/pipeline.py            # 5 runs x 5 s per target; 3 drains of 50,000
    .venv/bin/python bench/pipeline.py --quick    # smoke mode: 1 run x 2 s; 1 drain of 5,000
    .venv/bin/python bench/pipeline.py --kafka-client librdkafka   # the other producer

Starts the demo model server, bench/passthrough.py, the embedded Kafka-compatible broker
(Tansu) and six sidecars, one per sink (JSON-lines file, Kafka) and durability (memory,
batch, sync), each its own process with its own write-ahead log, events file or topic,
on free loopback ports. Then:

1. Peak throughput: for the 1 KB JSON chat request, req/s and p50/p99 through the
   pass-through and each sidecar, one under load at a time, runs interleaved, medians.
2. Events check: every sidecar's events file or topic (read back from the beginning)
   must hold a distinct event id for every response it sent; duplicates are reported.
3. Drain: a kafka+batch sidecar whose broker is absent gets a fixed number of requests;
   its log must then hold exactly that many events; a broker is started on the port it
   points at and the log is timed until empty: events/s delivered from the log to Kafka.

Prints tables and a markdown section for bench/RESULTS.md; exits non-zero if a server
fails or a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import report
from loadgen import chat_body, run_load, wrk_path
from pipeline_report import (
    CONFIGS,
    Drain,
    EventsRow,
    drain_table,
    events_table,
    markdown_section,
    notes,
    peak_table,
    reading,
)
from procs import (
    Service,
    free_port,
    ignoring_signals,
    machine_busy_seconds,
    metric_totals,
    pid_cpu_seconds,
    run_command,
    wait_quiet,
)
from report import PASSTHROUGH, Sample, Summary
from run import IDENTITY, OTHER_CPU_LIMIT, QUIET_WAIT_S, REDO_LIMIT

from sidecar.demo.broker import EmbeddedBroker

BENCH_DIR = Path(__file__).resolve().parent
PATH = "/v1/chat/completions"
LOG_EVENTS = "inference_sidecar_log_events"
EMITTED = "inference_sidecar_events_emitted_total"
DELIVERED = "inference_sidecar_events_delivered_total"
DROPPED = "inference_sidecar_events_dropped_total"
CATCH_UP_S = 60.0  # for a sink to deliver what a run left in the log
SETTLE_S = 30.0  # for a log to hold every event of the requests sent
DRAIN_LIMIT_S = 300.0  # for a backlog to drain once the broker is up
POLL_S = 0.02  # metrics polling while draining: the timing resolution of the drain
READ_IDLE_S = 2.0  # a topic quiet this long (with enough records read) has been read
# Waiting for a quiet machine (see run.py) is capped: this command makes more runs than
# run.py, so its cap is larger, and the drains get their own.
QUIET_BUDGET_S, DRAIN_QUIET_BUDGET_S = 300.0, 120.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="Peak runs per target (medians).")
    p.add_argument("--duration", type=float, default=5.0, help="Seconds per peak run.")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--warmup", type=float, default=1.0, help="Unrecorded seconds per target.")
    p.add_argument("--backlog", type=int, default=50_000,
                   help="Requests sent while the broker is absent, per drain.")
    p.add_argument("--drains", type=int, default=3, help="Drains (median reported).")
    p.add_argument("--generator", choices=("wrk", "python"),
                   help="Peak load generator (default: wrk if installed, else python). "
                        "The backlog is always sent by the Python one (exact count).")
    p.add_argument("--quick", action="store_true",
                   help="Smoke mode: 1 run of 2 s, 1 drain of 5,000; never waits for quiet.")
    p.add_argument("--kafka-client", choices=("kafka-python", "librdkafka"),
                   default="kafka-python",
                   help="The Kafka sidecars' producer library (kafka_client).")
    p.add_argument("--keep-workdir", action="store_true",
                   help="Keep the servers' logs, write-ahead logs and events files.")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup, args.backlog, args.drains = 1, 2.0, 0.5, 5000, 1
    if min(args.runs, args.connections, args.backlog, args.drains) < 1 or args.duration <= 0:
        p.error("--runs, --duration, --connections, --backlog and --drains must be positive")
    args.generator = args.generator or ("wrk" if wrk_path() else "python")
    return args


@dataclass
class Target:
    """The pass-through or one sidecar, and what it answered (for the events check)."""

    name: str
    service: Service
    url: str
    sink: str = "-"
    durability: str = "-"
    admin_url: str = ""  # empty for the pass-through
    events_file: Path | None = None
    topic: str | None = None
    bootstrap: str | None = None
    answered: int = 0  # responses sent: smoke, warm-up and measured requests
    undelivered: list[int] = field(default_factory=list)  # log_events right after each run


def listen_port() -> int:
    """A free loopback port below the ephemeral range where there is one.

    ``free_port`` hands out ephemeral ports, which any outgoing connection on the machine
    can take before our server binds it; the drain keeps a broker port free for seconds.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(100):
        if low <= 11_000:
            break
        port = random.randrange(10_000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def event_ids_in_file(path: Path) -> list[str]:
    try:
        with open(path, "rb") as fh:
            return [json.loads(line)["id"] for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def event_ids_on_topic(bootstrap: str, topic: str, min_records: int,
                       timeout_s: float = 180.0) -> list[str]:
    """The CloudEvents ids of every record of ``topic``, read from the beginning of every
    partition (assigned by hand: no consumer group), until the topic stayed quiet for
    ``READ_IDLE_S`` with at least ``min_records`` read, or ``timeout_s`` passed. Not up
    to the end offsets: Tansu's can under-report."""
    with warnings.catch_warnings():  # kafka-python 3.0.12 uses deprecated importlib APIs
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaConsumer, TopicPartition

    deadline = time.monotonic() + timeout_s
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             request_timeout_ms=5000)
    try:
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic}: no partitions known")
            time.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        ids: list[str] = []
        last_new = time.monotonic()
        while (now := time.monotonic()) < deadline:
            fetched = consumer.poll(timeout_ms=200, max_records=5000)
            batch = [json.loads(r.value)["id"] for rs in fetched.values() for r in rs]
            if batch:
                ids.extend(batch)
                last_new = now
            elif len(ids) >= min_records and now - last_new >= READ_IDLE_S:
                break
        return ids
    finally:
        consumer.close()


class PipelineBench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.services: list[Service] = []
        self.brokers: list[EmbeddedBroker] = []
        self.targets: dict[str, Target] = {}
        self.upstream_url = ""
        self.body = workdir / "json.json"
        self.body.write_bytes(chat_body(False))
        self.quiet_budget = 0.0 if args.quick else QUIET_BUDGET_S
        self.redone = 0
        self.samples: dict[str, list[Sample]] = {}

    # --- processes -----------------------------------------------------------------------

    def _service(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Service:
        service = Service(name, cmd, self.workdir, env)
        self.services.append(service)  # registered before waiting, so it is always stopped
        return service

    def _broker(self, port: int) -> EmbeddedBroker:
        broker = EmbeddedBroker(port=port)
        self.brokers.append(broker)  # registered before starting, so it is always closed
        return broker.start()

    def _spawn_sidecar(self, name: str, sink: str, durability: str,
                       bootstrap: str | None = None) -> tuple[Target, int]:
        """Start one sidecar (not waiting for it); its files in workdir/<name>/."""
        port, admin_port = listen_port(), listen_port()
        files = self.workdir / name.replace("+", "-")
        files.mkdir(exist_ok=True)  # a retried start reuses it
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
        env.update(IDENTITY, SIDECAR_UPSTREAM_URL=self.upstream_url,
                   SIDECAR_LISTEN=f"127.0.0.1:{port}",
                   SIDECAR_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
                   SIDECAR_EVENTS_FILE=str(files / "events.jsonl"),
                   SIDECAR_WAL_DIR=str(files / "wal"), SIDECAR_DURABILITY=durability,
                   SIDECAR_LOG_LEVEL="warning",
                   # Sinks and durability modes are compared here; masking (the default
                   # strict profile's worker) and detection (the default detectors'
                   # worker) would add the same cost to every sidecar and more processes
                   # on the two cores: bench/run.py measures them.
                   SIDECAR_PRIVACY_PROFILE="metadata-only", SIDECAR_DETECTORS="off",
                   SIDECAR_DRAIN_TIMEOUT="10s")  # keeps every stop inside its bound
        topic = None
        if sink == "kafka":
            assert bootstrap is not None
            topic = "bench." + name.replace("+", "-")
            env.update(SIDECAR_KAFKA_BOOTSTRAP=bootstrap, SIDECAR_KAFKA_EVENTS_TOPIC=topic,
                       SIDECAR_KAFKA_CLIENT=self.args.kafka_client)
        py = sys.executable
        exe = Path(py).with_name("inference-sidecar")
        cmd = [str(exe), "serve"] if exe.exists() else [py, "-m", "sidecar", "serve"]
        service = self._service(name.replace("+", "-"), cmd, env)
        target = Target(name, service, f"http://127.0.0.1:{port}{PATH}", sink, durability,
                        f"http://127.0.0.1:{admin_port}", files / "events.jsonl", topic,
                        bootstrap)
        return target, port

    def _ready(self, target: Target, port: int) -> Target:
        """Wait until ``target`` answers; if one of its ports was taken meanwhile, start it
        again on others (at most twice). Returns the sidecar that answered."""
        for attempt in range(3):
            try:
                target.service.wait_tcp(port)
                target.service.wait_http_ok(target.admin_url + "/readyz")
                break
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == 2:
                    raise
                print(f"  ({target.name}: a port was taken; starting it again)", flush=True)
                target, port = self._spawn_sidecar(target.name, target.sink,
                                                   target.durability, target.bootstrap)
        self._smoke(target)
        return target

    def _smoke(self, target: Target) -> None:
        """One request, so a broken path fails fast and loudly."""
        request = urllib.request.Request(target.url, data=self.body.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            payload = response.read()
            stamped = response.headers.get("x-inference-id") is not None
        target.answered += 1
        if response.status != 200 or not payload or stamped != bool(target.admin_url):
            raise RuntimeError(f"{target.name}: status {response.status}, {len(payload)} "
                               f"bytes, stamped={stamped}")

    def start(self) -> None:
        py = sys.executable
        up_port, pt_port = listen_port(), listen_port()
        self.upstream_url = f"http://127.0.0.1:{up_port}"
        self._service("upstream", [py, "-m", "sidecar.demo.model_server", "--host",
                                   "127.0.0.1", "--port", str(up_port)]).wait_tcp(up_port)
        passthrough = self._service("pass-through", [
            py, str(BENCH_DIR / "passthrough.py"), "--listen-port", str(pt_port),
            "--upstream", self.upstream_url])
        passthrough.wait_tcp(pt_port)
        self.targets[PASSTHROUGH] = Target(PASSTHROUGH, passthrough,
                                           f"http://127.0.0.1:{pt_port}{PATH}")
        self._smoke(self.targets[PASSTHROUGH])
        broker = self._broker(listen_port())
        spawned = [self._spawn_sidecar(name, *name.split("+"), bootstrap=broker.bootstrap)
                   for name in CONFIGS]  # all start at once, then each is waited for
        for target, port in spawned:
            self.targets[target.name] = self._ready(target, port)

    def stop_all(self) -> None:
        with ignoring_signals():
            for service in reversed(self.services):
                service.stop()
            for broker in self.brokers:
                broker.close()

    # --- peak throughput -------------------------------------------------------------------

    def _main_broker_pid(self) -> int:
        return self.brokers[0].pid

    def _cpu_snapshot(self, target: Target) -> list[float | None]:
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished load generators
        upstream = self.services[0]
        # The idle targets are ours: not "other" (a few % of a core in all).
        idle = sum(t.service.cpu_seconds() or 0.0 for t in self.targets.values()
                   if t is not target and t.service.proc.poll() is None)
        return [upstream.cpu_seconds(), target.service.cpu_seconds(),
                pid_cpu_seconds(self._main_broker_pid()), reaped.ru_utime + reaped.ru_stime,
                idle, machine_busy_seconds()]

    def _settle(self, settle: bool) -> None:
        if settle and self.quiet_budget > 0:
            t0 = time.monotonic()
            if not wait_quiet(OTHER_CPU_LIMIT, min(QUIET_WAIT_S, self.quiet_budget)):
                print("  (machine still busy; measuring anyway)", flush=True)
            self.quiet_budget -= time.monotonic() - t0

    def measure(self, target: Target, duration: float, settle: bool = True) -> Sample:
        """One run, started on a quiet machine and redone if another job took CPU."""
        redo_limit = REDO_LIMIT if settle and not self.args.quick else 0
        for attempt in range(redo_limit + 1):
            self._settle(settle)
            sample = self._measure_once(target, duration)
            other = sample.other_cpu
            if (other is None or other <= OTHER_CPU_LIMIT or attempt == redo_limit
                    or self.quiet_budget <= 0):
                break
            self.redone += 1
            print(f"  (redoing {target.name}: other processes used {other:.0%} of a core)",
                  flush=True)
        return sample

    def _measure_once(self, target: Target, duration: float) -> Sample:
        before = self._cpu_snapshot(target)
        t0 = time.monotonic()
        result = run_load(self.args.generator, target.url, self.body, self.args.connections,
                          duration)
        wall = time.monotonic() - t0
        upstream, proxied, broker, loadgen, idle, busy = (
            None if b is None or a is None else (a - b) / wall
            for b, a in zip(before, self._cpu_snapshot(target), strict=True))
        other = None if busy is None else max(
            0.0, busy - sum(c or 0.0 for c in (upstream, proxied, broker, loadgen, idle)))
        target.answered += result.requests
        if target.admin_url:  # did the sink keep up? (read after the run, not during it)
            log_events = metric_totals(target.admin_url + "/metrics", (LOG_EVENTS,))
            target.undelivered.append(int(log_events[LOG_EVENTS]))
        return Sample(result, proxy_cpu=proxied, upstream_cpu=upstream, loadgen_cpu=loadgen,
                      other_cpu=other, broker_cpu=broker)

    def sweep(self) -> dict[str, Summary]:
        """``runs`` rounds; each visits every target, starting one further along."""
        names = tuple(self.targets)
        self.samples = {name: [] for name in names}
        for run in range(self.args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                s = self.measure(self.targets[name], self.args.duration)
                self.samples[name].append(s)
                r = s.result
                print(f"  run {run + 1}/{self.args.runs} {name:13} {r.rps:9,.0f} req/s  "
                      f"p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                      + (f"  errors {r.errors}" if r.errors else ""), flush=True)
        return {name: report.summarize(self.samples[name]) for name in names}

    # --- events check ----------------------------------------------------------------------

    def events_check(self) -> list[EventsRow]:
        """Per sidecar: wait (bounded) until its log is delivered, stop it (SIGTERM drains
        the rest), then read its events file or topic back and count distinct ids."""
        rows = []
        for target in self.targets.values():
            if not target.admin_url:
                continue
            metrics = target.admin_url + "/metrics"
            t0 = time.monotonic()
            while (metric_totals(metrics, (LOG_EVENTS,))[LOG_EVENTS] > 0
                   and time.monotonic() - t0 < CATCH_UP_S):
                time.sleep(0.1)
            lag = time.monotonic() - t0
            dropped = metric_totals(metrics, (DROPPED,))[DROPPED]
            status = target.service.stop()
            if target.topic is not None:
                ids = event_ids_on_topic(self.brokers[0].bootstrap, target.topic,
                                         target.answered)
            else:
                assert target.events_file is not None
                ids = event_ids_in_file(target.events_file)
            rows.append(EventsRow(target.name, target.answered, lag, len(ids), len(set(ids)),
                                  dropped, status))
            print(f"  {target.name}: {len(set(ids)):,} distinct ids for {target.answered:,} "
                  f"responses", flush=True)
        return rows

    # --- drain: sustained events/s from the log to the broker ------------------------------

    def drain(self, index: int) -> Drain:
        """One drain, started on a quiet machine and redone if another job took CPU."""
        redo_limit = 0 if self.args.quick else REDO_LIMIT
        for attempt in range(redo_limit + 1):
            result = self._drain_once(f"drain-{index}" + (f"-{attempt}" if attempt else ""))
            other = result.other_cpu
            if (other is None or other <= OTHER_CPU_LIMIT or attempt == redo_limit
                    or self.quiet_budget <= 0):
                break
            self.redone += 1
            print(f"  (redoing drain {index}: other processes used {other:.0%} of a core)",
                  flush=True)
        return result

    def _drain_once(self, name: str) -> Drain:
        broker_port = listen_port()  # where the sidecar looks for a broker not yet started
        target, port = self._spawn_sidecar(name, "kafka", "batch",
                                           bootstrap=f"127.0.0.1:{broker_port}")
        target = self._ready(target, port)
        metrics = target.admin_url + "/metrics"
        n = self.args.backlog
        result = run_load("python", target.url, self.body, self.args.connections,
                          duration_s=max(120.0, n / 100), max_requests=n)
        target.answered += result.requests
        sent = target.answered
        logged = self._wait_logged(metrics, sent)
        print(f"  {name}: {sent:,} responses sent, {logged:,} events in the log "
              f"(socket errors {result.socket_errors}); starting the broker", flush=True)
        self._settle(True)
        t0 = time.monotonic()
        broker = self._broker(broker_port)
        first: tuple[float, float, list[float | None]] | None = None
        end: tuple[float, float, list[float | None]] | None = None
        while time.monotonic() - t0 < DRAIN_LIMIT_S:
            m = metric_totals(metrics, (LOG_EVENTS, DELIVERED))
            now = time.monotonic()
            if first is None and m[DELIVERED] > 0:
                first = (now, m[DELIVERED], self._drain_cpu(target, broker))
            if m[LOG_EVENTS] == 0 and first is not None:
                end = (now, m[DELIVERED], self._drain_cpu(target, broker))
                break
            time.sleep(POLL_S)
        if first is None or end is None:
            raise RuntimeError(f"{name}: log not drained {DRAIN_LIMIT_S:g} s after the broker "
                               f"started:\n{target.service.log_tail()}")
        drain_s = end[0] - first[0]
        rate = (end[1] - first[1]) / drain_s if drain_s > 0 else 0.0
        cpu = [None if b is None or a is None else (a - b) / drain_s if drain_s > 0 else None
               for b, a in zip(first[2], end[2], strict=True)]
        sidecar_cpu, broker_cpu, own_cpu, busy = cpu
        other = None if busy is None else max(
            0.0, busy - sum(c or 0.0 for c in (sidecar_cpu, broker_cpu, own_cpu)))
        ids = event_ids_on_topic(broker.bootstrap, target.topic or "", sent)
        status = target.service.stop()
        broker.close()
        distinct = len(set(ids))
        ok = logged == sent and distinct >= sent and status == 0
        drain = Drain(sent, logged, first[0] - t0, drain_s, rate, end[1] / (end[0] - t0),
                      sidecar_cpu, broker_cpu, other, len(ids), distinct, ok)
        print(f"  {name}: drained in {drain_s:.2f} s after {drain.reconnect_s:.2f} s to "
              f"reconnect: {rate:,.0f} events/s; {distinct:,} distinct ids on the topic "
              f"({len(ids) - distinct:,} duplicates)", flush=True)
        return drain

    def _drain_cpu(self, target: Target, broker: EmbeddedBroker) -> list[float | None]:
        own = resource.getrusage(resource.RUSAGE_SELF)  # this process polls /metrics
        return [target.service.cpu_seconds(), pid_cpu_seconds(broker.pid),
                own.ru_utime + own.ru_stime + (self.services[0].cpu_seconds() or 0.0),
                machine_busy_seconds()]

    @staticmethod
    def _wait_logged(metrics: str, sent: int) -> int:
        """Wait (bounded) until the log holds every accepted event and stops changing."""
        deadline = time.monotonic() + SETTLE_S
        last = -1.0
        while time.monotonic() < deadline:
            m = metric_totals(metrics, (LOG_EVENTS, EMITTED))
            if m[LOG_EVENTS] == m[EMITTED] == last and last >= sent:
                break
            last = m[LOG_EVENTS]
            time.sleep(0.2)
        return int(metric_totals(metrics, (LOG_EVENTS,))[LOG_EVENTS])


# --- report ------------------------------------------------------------------------------


def _measure(args: argparse.Namespace, bench: PipelineBench, date: str,
             command: str) -> tuple[str, bool]:
    print(f"starting upstream, pass-through, broker and {len(CONFIGS)} sidecars "
          f"(work dir {bench.workdir})", flush=True)
    bench.start()
    code = report.code_version(BENCH_DIR.parent, bench.workdir)
    print(f"generator {args.generator}: 1 thread, {args.connections} connections, "
          f"{args.duration:g} s x {args.runs} runs; warm-up {args.warmup:g} s per target",
          flush=True)
    for target in bench.targets.values():
        bench.measure(target, args.warmup, settle=False)
    print("peak throughput (one target under load at a time):", flush=True)
    peak = bench.sweep()
    print("events check:", flush=True)
    events_rows = bench.events_check()
    for name in (PASSTHROUGH, *CONFIGS):  # nothing measured from here on needs them
        bench.targets[name].service.stop()
    bench.brokers[0].close()
    print(f"drain: {args.drains} x {args.backlog:,} requests to a kafka+batch sidecar "
          "whose broker is absent, then the broker is started:", flush=True)
    bench.quiet_budget = 0.0 if args.quick else DRAIN_QUIET_BUDGET_S
    drains = [bench.drain(i) for i in range(1, args.drains + 1)]

    peak_md, reading_lines = peak_table(peak, bench), reading(peak, bench)
    drain_md, events_md = drain_table(drains), events_table(events_rows)
    drain_line = (f"Sustained delivery from the write-ahead log to Kafka: "
                  f"**{statistics.median(d.rate for d in drains):,.0f} events/s** (median of "
                  f"{len(drains)} drain(s) of {args.backlog:,} events; "
                  f"{statistics.median(d.rate_total for d in drains):,.0f} events/s counting "
                  "from the broker's start, which includes the sink's retry back-off of up "
                  "to 2 s and the producer's reconnect).")
    ok = all(r.ok for r in events_rows) and all(d.ok for d in drains)
    print("\n".join(["", peak_md, "", *reading_lines, "", drain_md, "", drain_line, "",
                     events_md]))
    setup = (f"{args.generator}, 1 thread, {args.connections} connections, {args.duration:g} s "
             f"per run, {args.runs} run(s) per target interleaved (one target under load at a "
             "time, the others idle), medians. Request: POST /v1/chat/completions, "
             f"{len(chat_body(False))} B JSON body. CPU: share of one core during the run; "
             "CPU other excludes this bench's idle servers. "
             "Sidecars on default settings except the privacy profile (metadata-only), "
             "detectors (off), `durability` and the sink: `kafka` = the "
             "embedded broker (Tansu, in memory), one topic per sidecar, producer "
             f"`kafka_client: {args.kafka_client}`; `jsonl` = an events "
             f"file. Their files in {bench.workdir.parent} ({report.filesystem(bench.workdir)}). "
             f"Drain: {args.backlog:,} requests sent by the Python generator ({args.connections} "
             "connections) to a kafka+batch sidecar whose broker was not started; events/s = "
             "events delivered between the first delivery seen on /metrics and an empty log "
             f"(polled every {POLL_S * 1000:.0f} ms), over that time. {bench.redone} run(s) "
             "redone because another job took CPU meanwhile.")
    section = markdown_section(
        date=date, command=command, code=code, setup=setup, peak_md=peak_md,
        reading_lines=reading_lines, drain_md=drain_md, drain_line=drain_line,
        events_md=events_md, note_lines=notes(peak, drains, args.generator))
    return section, ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    holder: list[PipelineBench] = []

    def measure(workdir: Path, date: str, command: str) -> tuple[str, bool]:
        holder.append(PipelineBench(args, workdir))
        return _measure(args, holder[0], date, command)

    def stop() -> None:
        if holder:
            holder[0].stop_all()

    return run_command(
        "bench/pipeline.py", argv, "sidecar-pipeline-", args.keep_workdir, measure, stop,
        failures=(RuntimeError, OSError, subprocess.SubprocessError, ImportError),
    )


if __name__ == "__main__":
    sys.exit(main())
