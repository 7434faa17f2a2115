"""``inference-sidecar`` command line: ``serve``, ``check-config``, ``demo``, and the
detector tools ``replay`` (tuning on recorded events) and ``detect`` (a consumer group).

Every setting in ``sidecar.config.Settings`` is also a flag of ``serve`` and
``check-config`` (``model_version`` → ``--model-version``). Configuration errors print
one line naming the key and its source and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from sidecar import __version__
from sidecar.config import (
    SETTINGS_FIELDS,
    ConfigError,
    Settings,
    env_name,
    flag_name,
    load_settings_and_sources,
    misspelt_variables,
    sourced,
)
from sidecar.logs import configure_logging, get_logger

EXIT_CONFIG = 2
log = get_logger("config")


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported OS
        asyncio.run(main())
    else:
        uvloop.run(main())


class _CommandParser(argparse.ArgumentParser):
    """A command's usage error in one line: its usage lists every setting (sixty flags),
    which buried the error. No abbreviated flags: ``--model-ver`` reads as a typo, and
    a flag added later would change what an abbreviation meant."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see --help)\n")


class _Once(argparse.Action):
    """A setting's flag given twice is an error, not the last one silently winning (as a
    key given twice in the config file is)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            parser.error(f"{option_string} given twice")
        setattr(namespace, self.dest, values)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH", action=_Once,
                        help="YAML config file (or SIDECAR_CONFIG).")
    group = parser.add_argument_group("settings (flag > environment > config file > default)")
    for key, spec in SETTINGS_FIELDS.items():
        group.add_argument(
            flag_name(key), dest=key, metavar="VALUE", action=_Once,
            help=f"{spec.metadata['help']} [{env_name(key)}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-sidecar",
        description="Compliance sidecar for model servers: stamps and records every inference.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_CommandParser)
    serve = commands.add_parser("serve", help="Run the sidecar in front of the upstream.")
    _add_setting_flags(serve)
    check = commands.add_parser("check-config", help="Validate the configuration and exit.")
    _add_setting_flags(check)
    demo = commands.add_parser(
        "demo", help="Run a demo model server, the sidecar in front of it, and sample traffic."
    )
    demo.add_argument("--requests", type=int, default=12, help="Sample requests to send.")
    demo.add_argument("--events-file", default="demo-events.jsonl", help="Where events go.")
    demo.add_argument("--keep-running", action="store_true",
                      help="Keep serving after the sample traffic (Ctrl-C to stop).")
    # Cheap imports (argparse only): the detectors and kafka-python load in run().
    from sidecar.tools import detect, replay

    replay.add_parser(commands)
    detect.add_parser(commands)
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    from sidecar.privacy.context import build_privacy
    from sidecar.sinks.registry import preflight

    flags = {key: getattr(args, key) for key in SETTINGS_FIELDS}
    settings, sources = load_settings_and_sources(args.config, flags)
    try:
        preflight(settings)
        build_privacy(settings)  # profiles and the identity key: refused here, not mid-start
        check_detectors(settings)
    except ConfigError as exc:
        raise sourced(exc, sources) from None
    return settings


def check_detectors(settings: Settings) -> None:
    """A detectors file that does not validate is refused with its file, key and reason."""
    from sidecar.detection.runtime import detectors_config

    detectors_config(settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        from sidecar.tools import replay

        return replay.run(args)
    if args.command == "detect":
        from sidecar.tools import detect

        return detect.run(args)
    if args.command == "demo":
        from sidecar.demo.run import run_demo

        return run_demo(args.requests, args.events_file, args.keep_running)
    # Validating the settings loads presidio and river (seconds): a SIGTERM meanwhile is a
    # clean stop (exit 0), not the default action's exit 143.
    early: list[int] = []
    if args.command == "serve":
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: early.append(signum))
        # SIGHUP (a detectors reload) never ends the process, also while the event loop,
        # which handles it, is not running yet or any more.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print(f"inference-sidecar: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    misspelt = misspelt_variables()
    if args.command == "check-config":
        for warning in misspelt:
            print(f"inference-sidecar: warning: {warning}", file=sys.stderr)
        print(f"config ok: model {settings.model_name} {settings.model_version}, "
              f"policy {settings.policy_version}, evidence {settings.evidence_bundle_id}, "
              f"upstream {settings.upstream_url}")
        return 0
    configure_logging(settings.log_level)
    for warning in misspelt:
        log.warning(warning)
    if early:
        return 0  # stopped before anything was served
    return _serve(settings, early)


def _serve(settings: Settings, early: list[int]) -> int:
    """Run the sidecar; map start-up failures to one clear line and an exit status."""
    from sidecar.durability.base import LogLocked
    from sidecar.server import ListenError, serve
    from sidecar.sinks.base import SinkError

    try:
        run_async(lambda: serve(settings, early))
    except ConfigError as exc:  # settings that only the sink or log could judge
        return _fail(f"config error: {exc}", EXIT_CONFIG)
    except SinkError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except ListenError as exc:
        return _fail(f"cannot listen: {exc.strerror}", 1)
    except LogLocked:
        return _fail(f"wal_dir {settings.wal_dir}: in use by another sidecar process", 1)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"wal_dir {settings.wal_dir}: {where}{exc.strerror or exc}", 1)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"inference-sidecar: {message}", file=sys.stderr)
    return status
