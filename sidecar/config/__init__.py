"""Configuration: one typed, frozen ``Settings`` object, validated once at start-up.

Every setting comes from, in order of precedence: a CLI flag (``--upstream-url``), an
environment variable (``SIDECAR_UPSTREAM_URL``), the YAML file given by ``--config``
(key ``upstream_url``), then the default in ``settings.py``. A bad value raises
``ConfigError`` whose message names the key, where it came from and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from detectors.yamlfile import UniqueKeyLoader, yaml_problem
from sidecar.config.parsers import SecretInValue, YamlFloat, YamlInt
from sidecar.config.settings import REQUIRED, Settings
from sidecar.proxy.routes import DEFAULT_TEMPLATES

__all__ = [
    "SETTINGS_FIELDS", "ConfigError", "Settings", "env_name", "flag_name", "load_settings",
    "load_settings_and_sources", "sourced",
]

ENV_PREFIX = "SIDECAR_"


class ConfigError(ValueError):
    """A setting is missing or invalid; the message is meant for the operator as is."""


SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


class _Loader(UniqueKeyLoader):
    """``safe_load`` with duplicate keys refused (a second ``model_version`` would stamp
    every response with it), and numbers that remember how they were written (see
    ``parsers.text``)."""


def _number(kind: type[YamlInt] | type[YamlFloat], construct: Any) -> Any:
    def constructor(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        value = kind(construct(loader, node))
        value.source = str(node.value)
        return value
    return constructor


_Loader.add_constructor("tag:yaml.org,2002:int",
                        _number(YamlInt, yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float",
                        _number(YamlFloat, yaml.SafeLoader.construct_yaml_float))
# No setting is a date: `policy_version: 2024-01-01` is the text the operator wrote.
_Loader.add_constructor("tag:yaml.org,2002:timestamp",
                        lambda loader, node: str(node.value))


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    unknown = sorted(str(k) for k in data if k not in SETTINGS_FIELDS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], SETTINGS_FIELDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}{hint}")
    return data


def misspelt_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """``SIDECAR_*`` variables that are no setting but read like one: a typo is otherwise
    ignored without a word. Only close ones: Kubernetes adds ``SIDECAR_SERVICE_HOST``,
    ``SIDECAR_PORT_...`` for a Service named "sidecar".

    >>> [warning] = misspelt_variables({"SIDECAR_MODEL_VERSON": "2",
    ...                                 "SIDECAR_SERVICE_HOST": "10.0.0.1"})
    >>> warning.endswith("did you mean SIDECAR_MODEL_VERSION?")
    True
    """
    env = os.environ if environ is None else environ
    known = {env_name(key): key for key in SETTINGS_FIELDS}
    out = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known or name == ENV_PREFIX + "CONFIG":
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            out.append(f"environment variable {name} is not a setting; did you mean {close[0]}?")
    return out


def load_settings(
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge flags > environment > file > defaults, validate, and return ``Settings``."""
    return load_settings_and_sources(config_path, flags, environ)[0]


def sourced(exc: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """``exc``, a later check's error on ``"<setting>: reason"``, with the setting's
    source in place of its name, as the settings' own errors have it.

    >>> str(sourced(ConfigError("privacy_profile: no such profile"),
    ...             {"privacy_profile": "config file s.yaml, key 'privacy_profile'"}))
    "config file s.yaml, key 'privacy_profile': no such profile"
    >>> str(sourced(ConfigError("wal_dir /srv/x: not a directory"),
    ...             {"wal_dir": "config file s.yaml, key 'wal_dir'"}))
    "config file s.yaml, key 'wal_dir': /srv/x: not a directory"
    """
    head, sep, reason = str(exc).partition(": ")
    key, _, value = head.partition(" ")  # "<setting> <the value it names>: reason"
    if not sep or key not in sources:
        return exc
    return ConfigError(f"{sources[key]}: {value + ': ' if value else ''}{reason}")


def load_settings_and_sources(
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """``load_settings``, and where each setting not left at its default came from."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    config_path = config_path or environ.get(ENV_PREFIX + "CONFIG") or None
    file_values = _read_file(config_path) if config_path else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # where each setting not left at its default came from
    for key, spec in SETTINGS_FIELDS.items():
        if flags.get(key) is not None:
            raw, source = flags[key], f"flag {flag_name(key)}"
        elif env_name(key) in environ:
            raw, source = environ[env_name(key)], f"environment variable {env_name(key)}"
        elif key in file_values:
            raw, source = file_values[key], f"config file {config_path}, key {key!r}"
        elif spec.default is REQUIRED:
            raise ConfigError(
                f"missing required setting {key!r}: set {env_name(key)}, "
                f"pass {flag_name(key)}, or add {key!r} to the config file"
            )
        else:
            values[key] = spec.default
            continue
        sources[key] = source
        try:
            values[key] = spec.metadata["parse"](raw)
        except ValueError as exc:
            got = "a value not shown" if isinstance(exc, SecretInValue) else repr(raw)
            raise ConfigError(f"{source}: expected {exc}, got {got}") from None
    settings = Settings(**values)
    _cross_check(settings, sources)
    return settings, sources


MIN_SEGMENT_BYTES = 64 * 1024  # room for the largest event, with margin
_SECRET_FILES = (
    "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
    "kafka_sasl_username_file", "kafka_sasl_password_file", "client_id_key_file",
    "privacy_hash_key_file",
)


def _cross_check(s: Settings, sources: Mapping[str, str]) -> None:
    """Rules that involve more than one setting, or the files a setting names. Each error
    names the setting's source, as a single setting's error does."""

    def where(key: str) -> str:
        if key in sources:
            return sources[key]
        return f"{key} ({'not set' if getattr(s, key) is None else 'default'})"

    if s.wal_segment_bytes < MIN_SEGMENT_BYTES:
        raise ConfigError(
            f"{where('wal_segment_bytes')}: expected at least {MIN_SEGMENT_BYTES} bytes (64KiB), "
            f"got {s.wal_segment_bytes}"
        )
    if s.durability == "memory" and s.wal_max_bytes < MIN_SEGMENT_BYTES:
        # The in-memory log is bounded by wal_max_bytes too; below this, events of a few
        # KB stop fitting and every request waits for room that never comes.
        raise ConfigError(
            f"{where('wal_max_bytes')}: expected at least {MIN_SEGMENT_BYTES} bytes (64KiB), "
            f"got {s.wal_max_bytes}")
    if s.durability != "memory" and s.wal_segment_bytes * 2 > s.wal_max_bytes:
        if "wal_max_bytes" in sources and "wal_segment_bytes" not in sources:
            raise ConfigError(  # the one the operator set is the one to name
                f"{where('wal_max_bytes')}: expected at least twice wal_segment_bytes "
                f"({s.wal_segment_bytes}), got {s.wal_max_bytes}")
        raise ConfigError(
            f"{where('wal_segment_bytes')}: expected at most half of wal_max_bytes "
            f"({s.wal_max_bytes}), got {s.wal_segment_bytes}"
        )
    if s.kafka_security_protocol.startswith("sasl") and s.kafka_sasl_mechanism is None:
        raise ConfigError(
            f"{where('kafka_sasl_mechanism')}: expected a mechanism for security protocol "
            f"{s.kafka_security_protocol}"
        )
    if s.kafka_sasl_mechanism is not None:
        for key in ("kafka_sasl_username_file", "kafka_sasl_password_file"):
            if getattr(s, key) is None:
                raise ConfigError(f"{where(key)}: expected a file path, since SASL is configured")
    if s.client_id_source is not None and s.client_id_key_file is None:
        raise ConfigError(f"{where('client_id_key_file')}: expected a key file, since "
                          "client_id_source "
                          f"is {s.client_id_source!r}")
    _check_addresses(s, where)
    known = (*DEFAULT_TEMPLATES, *s.routes)
    for route, _ in s.privacy_profile_routes:
        if route not in known:  # events name routes by template: it could never apply
            close = difflib.get_close_matches(route, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{where('privacy_profile_routes')}: expected route templates "
                              f"that are built in or listed in routes, got {route}{hint}")
    wal, events = os.path.abspath(s.wal_dir), os.path.abspath(s.events_file)
    in_use = s.kafka_bootstrap is None and s.durability != "memory"  # both files written
    if in_use and (events == wal or events.startswith(wal + os.sep)):
        raise ConfigError(f"{where('events_file')}: expected a file outside wal_dir "
                          f"({s.wal_dir}), got {s.events_file}")
    for key in _SECRET_FILES:
        path = getattr(s, key)
        if path is None:
            continue
        try:
            readable = os.path.isfile(path) and os.access(path, os.R_OK)
        except ValueError:  # e.g. a NUL byte in the path
            readable = False
        if not readable:
            shown = path if path.isprintable() else repr(path)
            raise ConfigError(f"{where(key)}: expected a readable file, cannot read {shown}")
    if s.client_id_key_file is not None and s.client_id_source is None:
        raise ConfigError(f"{where('client_id_source')}: expected a source (header:<name>, "
                          "api_key or client_address), since client_id_key_file is set")
    if s.kafka_ssl_keyfile is not None and s.kafka_ssl_certfile is None:
        raise ConfigError(f"{where('kafka_ssl_certfile')}: expected the client certificate, "
                          "since kafka_ssl_keyfile is set")


_ANY_HOST: Final = frozenset({"", "0.0.0.0", "::", "*"})
_LOOPBACK: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Two listen addresses that cannot both be bound (or one that reaches the other)."""
    (host_a, port_a), (host_b, port_b) = a, b
    return port_a == port_b != 0 and (host_a == host_b or host_a in _ANY_HOST or host_b in _ANY_HOST
                                 or (host_a in _LOOPBACK and host_b in _LOOPBACK))


def _check_addresses(s: Settings, where: Callable[[str], str]) -> None:
    if _same_socket(s.listen, s.admin_listen):
        raise ConfigError(f"{where('admin_listen')}: expected an address other than listen's "
                          f"({s.listen[0]}:{s.listen[1]})")
    parts = urlsplit(s.upstream_url)
    upstream = ((parts.hostname or "").strip("[]").lower(),
                parts.port or (443 if parts.scheme == "https" else 80))
    for key in ("listen", "admin_listen"):
        host, port = getattr(s, key)
        # the sidecar's own port on this host: every request would come back to it
        reaches = upstream[0] == host or (upstream[0] in _LOOPBACK and (
            host in _ANY_HOST or host in _LOOPBACK))
        if upstream[1] == port != 0 and reaches:
            raise ConfigError(f"{where('upstream_url')}: expected the model server's address, "
                              f"got the sidecar's own {key} ({host}:{port})")
