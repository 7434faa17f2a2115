"""The sidecar's own logs: one JSON object per line on stderr. Never a payload.

Call sites pass structured fields with ``extra={"fields": {...}}``; only those and the
message are written, so nothing from a request body can slip in through ``%r`` args.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

LOGGER_NAME = "inference_sidecar"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp logs every bad request with a traceback; our own handler records them instead.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    # kafka-python narrates every connection at INFO and logs record keys and values at
    # DEBUG: keep its warnings and errors only, whatever our own level.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # presidio narrates every recognizer it loads at INFO (masking worker start-up).
    logging.getLogger("presidio-analyzer").setLevel(logging.WARNING)


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}")
