"""The child side of ``Child``: ``python -m sidecar.workers.main``.

Reads framed messages on stdin and answers on stdout (protocol in ``child.py``). The init
message carries a picklable factory that builds the ``Service``; each call is handed to
``service.handle``. A ``ServiceError`` is the service refusing one call (the child stays);
any other exception is reported as ``unexpected <type>`` (never its message, which could
quote data) and the child stays too. Only the parent stops it: SIGINT and SIGTERM are
ignored, and EOF on stdin (the parent closed the pipe or died) closes the service and
exits. File descriptor 1 is moved aside and pointed at stderr, so a library that prints
cannot corrupt the protocol.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Protocol

from sidecar.logs import configure_logging, get_logger
from sidecar.workers.child import ServiceError, read_frame, write_frame

log = get_logger("worker.main")


class Service(Protocol):
    name: str

    def handle(self, message: Any) -> Any: ...

    def close(self) -> None: ...


def serve(inp: int, out: int) -> int:
    try:
        kind, log_level, factory = read_frame(inp)
    except EOFError:
        return 0
    except Exception as exc:  # unpickling imports the service's modules: any error
        configure_logging("info")  # one JSON line, as every log of the sidecar
        log.error("worker could not load its service", exc_info=True)
        write_frame(out, ("error", f"cannot load its service ({type(exc).__name__})"))
        return 1
    if kind != "init":
        write_frame(out, ("error", f"expected init, got {kind!r}"))
        return 2
    configure_logging(log_level)
    try:
        service: Service = factory()
    except ServiceError as exc:
        write_frame(out, ("error", str(exc)))
        return 1
    except Exception as exc:
        log.error("worker service could not start", exc_info=True)
        write_frame(out, ("error", f"cannot start its service ({type(exc).__name__})"))
        return 1
    write_frame(out, ("ok", None))
    try:
        while True:
            try:
                message = read_frame(inp)
            except EOFError:
                return 0
            if message[0] == "close":
                break
            try:
                write_frame(out, ("ok", service.handle(message[1])))
            except ServiceError as exc:
                write_frame(out, ("error", str(exc)))
            except Exception as exc:  # the parent must get an answer, whatever happened
                log.error("worker service raised", exc_info=True)
                write_frame(out, ("error", f"{service.name}: unexpected {type(exc).__name__}"))
    finally:
        service.close()
    write_frame(out, ("ok", None))
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
