"""Pick the event log and the sink from the settings (uvicorn-style: by config, not code).

- sink: Kafka when ``kafka_bootstrap`` is set, else the JSON-lines file;
- log: the on-disk write-ahead log, or a memory log with ``durability: memory``.
"""

from __future__ import annotations

from sidecar.config import ConfigError, Settings
from sidecar.durability.base import EventLog
from sidecar.durability.memory import MemoryLog
from sidecar.durability.wal import WriteAheadLog
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.jsonl import JsonLinesSink


def build_sink(settings: Settings) -> Sink:
    if settings.kafka_bootstrap:
        from sidecar.sinks.kafka import KafkaSink, kafka_settings_from

        return KafkaSink(kafka_settings_from(settings))
    return JsonLinesSink(settings.events_file)


def preflight(settings: Settings) -> None:
    """Judge the settings only the sink can judge, without connecting: ``ConfigError``."""
    if settings.kafka_bootstrap:
        from sidecar.sinks.kafka import check_files, kafka_settings_from

        kafka = kafka_settings_from(settings)
        try:
            check_files(kafka)
        except SinkError as exc:
            raise ConfigError(str(exc)) from None


def build_log(settings: Settings) -> EventLog:
    if settings.durability == "memory":
        return MemoryLog(settings.wal_max_bytes, settings.when_full)
    return WriteAheadLog(
        settings.wal_dir, settings.wal_max_bytes, settings.wal_segment_bytes, settings.when_full
    )
