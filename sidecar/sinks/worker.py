"""The child side of ``ProcessSink``: ``python -m sidecar.sinks.worker``.

Reads framed messages on stdin, runs the sink they name, answers on stdout (the frame
protocol is in ``sidecar/sinks/isolated.py``). Only the parent stops it: SIGINT and
SIGTERM are ignored, and EOF on stdin (the parent closed the pipe or died) closes the
sink and exits. File descriptor 1 is moved aside at start, and fd 1 pointed at stderr, so
a library that prints cannot corrupt the protocol.
"""

from __future__ import annotations

import os
import signal
import sys

from sidecar.logs import configure_logging, get_logger
from sidecar.sinks.base import Sink, SinkError
from sidecar.sinks.isolated import read_frame, write_frame

log = get_logger("sink.worker")


def serve(inp: int, out: int) -> int:
    try:
        kind, log_level, factory = read_frame(inp)
    except EOFError:
        return 0
    if kind != "init":
        write_frame(out, ("error", f"expected init, got {kind!r}"))
        return 2
    configure_logging(log_level)
    try:
        sink: Sink = factory()
    except SinkError as exc:
        write_frame(out, ("error", str(exc)))
        return 1
    write_frame(out, ("ok",))
    try:
        while True:
            try:
                message = read_frame(inp)
            except EOFError:
                return 0
            if message[0] == "close":
                break
            try:
                sink.write(message[1])
                write_frame(out, ("ok",))
            except SinkError as exc:
                write_frame(out, ("error", str(exc)))
            except Exception as exc:  # the parent must get an answer, whatever happened
                log.error("sink raised", exc_info=True)
                write_frame(out, ("error", f"{sink.name}: unexpected {type(exc).__name__}"))
    finally:
        sink.close()
    write_frame(out, ("ok",))
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        return serve(sys.stdin.fileno(), out)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
