"""Pick the event log and the sink from the settings (uvicorn-style: by config, not code).

- sink: Kafka when ``kafka_bootstrap`` is set (its producer in a child process, off the
  sidecar's GIL: ``isolated.py``; kafka-python's, or librdkafka's with ``kafka_client:
  librdkafka``: ``rdkafka.py``), else the JSON-lines file;
- log: the on-disk write-ahead log, or a memory log with ``durability: memory``.
"""

from __future__ import annotations

import functools
import os

from sidecar.config import ConfigError, Settings
from sidecar.durability.base import EventLog
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.jsonl import JsonLinesSink

WORKER_SLACK_S = 10.0  # past the sink's own bound on a write, the worker counts as hung


def build_sink(settings: Settings) -> Sink:
    if settings.kafka_bootstrap:
        from sidecar.sinks.isolated import ProcessSink
        from sidecar.sinks.kafka import KafkaSink, kafka_settings_from, write_bound_s

        kafka = kafka_settings_from(settings)
        sink_class = KafkaSink
        if kafka.client == "librdkafka":
            from sidecar.sinks.rdkafka import RdKafkaSink

            sink_class = RdKafkaSink
        return ProcessSink(functools.partial(sink_class, kafka), name=KafkaSink.name,
                           reply_timeout_s=write_bound_s(kafka) + WORKER_SLACK_S,
                           log_level=settings.log_level)
    return JsonLinesSink(settings.events_file)


def preflight(settings: Settings) -> None:
    """Judge the settings only the sink and the log can judge, without connecting or
    creating anything: ``ConfigError`` (so ``check-config`` refuses what ``serve`` would)."""
    if settings.kafka_bootstrap:
        from sidecar.sinks.kafka import check_files, kafka_settings_from

        kafka = kafka_settings_from(settings)
        try:
            check_files(kafka)
        except SinkError as exc:
            raise ConfigError(str(exc)) from None
    else:
        _writable_file("events_file", settings.events_file)
    if settings.durability != "memory":
        _usable_dir("wal_dir", settings.wal_dir)


def _writable_file(key: str, path: str) -> None:
    if os.path.isdir(path):
        raise ConfigError(f"{key} {path}: a directory, expected a file")
    target = path if os.path.exists(path) else _creatable(key, path)
    if not os.access(target, os.W_OK):
        raise ConfigError(f"{key} {path}: not writable")


def _usable_dir(key: str, path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{key} {path}: not a directory")
    target = path if os.path.isdir(path) else _creatable(key, path)
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path}: not writable")


def _creatable(key: str, path: str) -> str:
    """The nearest existing directory above ``path`` (the sink and the log create the
    missing ones); ``ConfigError`` when a file stands in the way."""
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"{key} {path}: {ancestor} is not a directory")
    return ancestor


def build_log(settings: Settings) -> EventLog:
    if settings.durability == "memory":
        return MemoryLog(settings.wal_max_bytes, settings.when_full)
    return WriteAheadLog(
        settings.wal_dir, settings.wal_max_bytes, settings.wal_segment_bytes, settings.when_full
    )
