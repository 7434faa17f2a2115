"""Benchmark: CPU per record of the Kafka sink, kafka-python against librdkafka.

    .venv/bin/python bench/kafka_clients.py            # 5 runs x 20,000 records per client
    .venv/bin/python bench/kafka_clients.py --quick    # smoke mode: 3 runs x 2,000

Each client's sink (``KafkaSink`` on kafka-python, ``RdKafkaSink`` on librdkafka, both on
the sidecar's default settings: acks=all, idempotent, lz4) writes the same records, 1 KB
CloudEvents with the sidecar's four headers and 20 keys, in batches of 500 as the
delivery thread hands them, in this process, to the embedded broker (Tansu). Runs
alternate between the clients. Measured per record: CPU of the whole process
(``time.process_time``: the calling thread and the producer's I/O threads) and of the
calling thread alone, and wall time; medians of the runs, librdkafka as a ratio to
kafka-python (the baseline) measured in the same run. What reaches the topic is read
back and counted (every record exactly once, or the run is reported as failed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import orjson
from kafka_broker import consume_all

from sidecar.demo.broker import EmbeddedBroker
from sidecar.events.record import EVENT_SEQ_STEP, Record
from sidecar.sinks.kafka import KafkaSink
from sidecar.sinks.kafka_config import KafkaSettings
from sidecar.sinks.rdkafka import RdKafkaSink

CLIENTS = ("kafka-python", "librdkafka")
BATCH = 500
KEYS = 20
HEADERS = (("ce_type", b"ai.inference.completed"), ("model_version", b"1.4.2"),
           ("policy_version", b"pol-2026-11"), ("evidence_bundle_id", b"eb-7f3a"))


def records(start: int, count: int) -> list[Record]:
    out = []
    for n in range(start, start + count):
        value = orjson.dumps({"specversion": "1.0", "id": f"inf-{n:012d}",
                              "source": "/sidecar/bench", "type": "ai.inference.completed",
                              "time": "2026-11-28T05:00:00Z", "data": {"n": n, "pad": "x" * 800}})
        out.append(Record((n + 1) * EVENT_SEQ_STEP, b"client-%d" % (n % KEYS), value, HEADERS))
    return out


def run_once(bootstrap: str, client: str, topic: str, count: int, start: int) -> dict[str, float]:
    settings = KafkaSettings(bootstrap=bootstrap, topic=topic, client=client)
    sink = RdKafkaSink(settings) if client == "librdkafka" else KafkaSink(settings)
    batches = [records(start + i, min(BATCH, count - i)) for i in range(0, count, BATCH)]
    try:
        sink.write(records(start - 10, 10))  # the producer, connected and knowing the topic
        cpu, thread, wall = time.process_time(), time.thread_time(), time.perf_counter()
        for batch in batches:
            sink.write(batch)
        cpu, thread, wall = (time.process_time() - cpu, time.thread_time() - thread,
                             time.perf_counter() - wall)
    finally:
        sink.close()
    return {"cpu": cpu / count * 1e6, "thread": thread / count * 1e6,
            "wall": wall / count * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="3 runs x 2,000 records")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.records = 3, 2_000
    results: dict[str, list[dict[str, float]]] = {c: [] for c in CLIENTS}
    failures = []
    with EmbeddedBroker() as broker:
        for run in range(args.runs):
            for client in CLIENTS:
                topic = f"bench.{client}.{run}"
                start = 1_000_000 * (run + 1)
                results[client].append(run_once(broker.bootstrap, client, topic,
                                                 args.records, start))
                got = consume_all(broker.bootstrap, topic, 60.0, min_records=args.records + 10)
                ids = [orjson.loads(r.value)["id"] for r in got]
                if len(ids) != args.records + 10 or len(set(ids)) != len(ids):
                    failures.append(f"{client} run {run + 1}: {len(ids)} records, "
                                    f"{len(set(ids))} distinct, {args.records + 10} sent")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"### Kafka producers {date}\n")
    print(f"- Command: `.venv/bin/python bench/kafka_clients.py"
          f"{' --quick' if args.quick else ''}`")
    print(f"- {args.runs} runs x {args.records:,} records of about 1 KB per client, batches of "
          f"{BATCH}, {KEYS} keys, 4 headers; acks=all, idempotent, lz4; medians.\n")
    print("| client | process CPU µs/record | calling thread µs/record | wall µs/record "
          "| CPU vs kafka-python |")
    print("|---|---:|---:|---:|---:|")
    base = statistics.median(r["cpu"] for r in results["kafka-python"])
    for client in CLIENTS:
        med = {k: statistics.median(r[k] for r in results[client]) for k in ("cpu", "thread",
                                                                             "wall")}
        print(f"| {client} | {med['cpu']:.1f} | {med['thread']:.1f} | {med['wall']:.1f} | "
              f"{med['cpu'] / base:.2f}x |")
    print()
    print("Every record read back exactly once." if not failures else
          "**Read-back failures:** " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
