"""Unit tests for ``sidecar.config``: precedence, every value parser, and every error path.

``load_settings`` is always called with an explicit ``environ`` mapping (or a cleaned
``os.environ`` via monkeypatch), so the machine's own ``SIDECAR_*`` variables never leak in.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import (
    SETTINGS_FIELDS,
    ConfigError,
    Settings,
    env_name,
    flag_name,
    load_settings,
)

IDENTITY_ENV = {
    "SIDECAR_MODEL_NAME": "credit-scorer",
    "SIDECAR_MODEL_VERSION": "2.4.1",
    "SIDECAR_POLICY_VERSION": "pol-7",
    "SIDECAR_EVIDENCE_BUNDLE_ID": "eb-2025-01",
}
REQUIRED_KEYS = ("model_name", "model_version", "policy_version", "evidence_bundle_id")


def load(
    env: dict[str, str] | None = None,
    flags: dict[str, Any] | None = None,
    config_path: str | None = None,
    *,
    identity: bool = True,
) -> Settings:
    environ = {**(IDENTITY_ENV if identity else {}), **(env or {})}
    return load_settings(config_path, flags or {}, environ)


def write_yaml(directory: Path, text: str, name: str = "sidecar.yaml") -> str:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_one(key: str, raw: Any, via: str, tmp_path: Path) -> Any:
    """Load ``key`` = ``raw`` from the given source ("flag", "env" or "file")."""
    if via == "flag":
        return getattr(load(flags={key: raw}), key)
    if via == "env":
        return getattr(load(env={env_name(key): raw}), key)
    path = write_yaml(tmp_path, yaml.safe_dump({key: raw}))
    return getattr(load(config_path=path), key)


@pytest.fixture(autouse=True)
def _clean_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that let load_settings read os.environ must not see the machine's settings."""
    for name in list(os.environ):
        if name.startswith("SIDECAR_"):
            monkeypatch.delenv(name)


# --- defaults and the Settings object ---------------------------------------------------


def test_defaults_apply_when_nothing_else_is_set() -> None:
    s = load()
    assert s.upstream_url == "http://127.0.0.1:8000"
    assert s.listen == ("0.0.0.0", 8080)
    assert s.admin_listen == ("127.0.0.1", 9090)
    assert s.events_file == "events.jsonl"
    assert s.max_body_bytes == 10 * 1024**2
    assert s.max_header_bytes == 8190
    assert s.max_headers == 100
    assert s.max_request_line_bytes == 8190
    assert s.connect_timeout == 5.0
    assert s.read_timeout == 120.0
    assert s.idle_timeout == 120.0
    assert s.total_timeout == 600.0
    assert s.drain_timeout == 30.0
    assert s.buffer_response_bytes == 1024**2
    assert s.upstream_max_connections == 1000
    assert s.replace_upstream_errors is False
    assert s.stamp_body is False
    assert s.stamp_body_key == "compliance"
    assert s.event_queue_size == 65536
    assert s.routes == ()
    assert s.upstream_health_path is None
    assert s.log_level == "info"


def test_defaults_of_the_pipeline_and_durability_settings() -> None:
    s = load()
    assert s.when_full == "block"  # fail closed
    assert s.durability == "sync"
    assert s.durability_interval == 0.05
    assert s.durability_timeout == 5.0
    assert s.wal_dir == "sidecar-wal"
    assert s.wal_max_bytes == 1024**3
    assert s.wal_segment_bytes == 8 * 1024**2


def test_defaults_of_the_kafka_settings() -> None:
    s = load()
    assert s.kafka_bootstrap is None  # no Kafka: the JSON-lines file sink
    assert s.kafka_events_topic == "inference.events"
    assert s.kafka_alerts_topic == "inference.alerts"
    assert s.kafka_security_protocol == "plaintext"
    assert s.kafka_ssl_cafile is None
    assert s.kafka_ssl_certfile is None
    assert s.kafka_ssl_keyfile is None
    assert s.kafka_sasl_mechanism is None
    assert s.kafka_sasl_username_file is None
    assert s.kafka_sasl_password_file is None
    assert s.kafka_compression == "auto"
    assert s.kafka_delivery_timeout == 30.0


def test_event_queue_when_full_was_replaced_by_when_full(tmp_path: Path) -> None:
    assert "event_queue_when_full" not in SETTINGS_FIELDS
    assert "when_full" in SETTINGS_FIELDS
    path = write_yaml(tmp_path, "event_queue_when_full: drop_oldest\n")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value).startswith(f"config file {path}: unknown key 'event_queue_when_full'")
    # The old environment variable is not a setting any more: it changes nothing.
    assert load(env={"SIDECAR_EVENT_QUEUE_WHEN_FULL": "drop_oldest"}).when_full == "block"


def test_identity_property_returns_the_four_stamped_values() -> None:
    assert load().identity == {
        "model_name": "credit-scorer",
        "model_version": "2.4.1",
        "policy_version": "pol-7",
        "evidence_bundle_id": "eb-2025-01",
    }


def test_settings_are_frozen() -> None:
    s = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.model_version = "changed"  # type: ignore[misc]


def test_every_setting_has_a_parser_and_help_text() -> None:
    for key, spec in SETTINGS_FIELDS.items():
        assert callable(spec.metadata["parse"]), key
        assert spec.metadata["help"].strip(), key


def test_env_and_flag_names() -> None:
    assert env_name("upstream_url") == "SIDECAR_UPSTREAM_URL"
    assert flag_name("upstream_url") == "--upstream-url"
    assert flag_name("evidence_bundle_id") == "--evidence-bundle-id"


# --- precedence: flag > env > file > default --------------------------------------------


@pytest.mark.parametrize(
    ("use_flag", "use_env", "use_file", "expected"),
    [
        (False, False, False, "http://127.0.0.1:8000"),  # default
        (False, False, True, "http://file:1"),
        (False, True, False, "http://env:2"),
        (False, True, True, "http://env:2"),
        (True, False, False, "http://flag:3"),
        (True, False, True, "http://flag:3"),
        (True, True, False, "http://flag:3"),
        (True, True, True, "http://flag:3"),
    ],
)
def test_precedence_flag_over_env_over_file_over_default(
    tmp_path: Path, use_flag: bool, use_env: bool, use_file: bool, expected: str
) -> None:
    flags = {"upstream_url": "http://flag:3"} if use_flag else {}
    env = {"SIDECAR_UPSTREAM_URL": "http://env:2"} if use_env else {}
    path = write_yaml(tmp_path, "upstream_url: http://file:1\n") if use_file else None
    assert load(env, flags, path).upstream_url == expected


def test_precedence_applies_to_required_keys_too(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model_version: from-file\npolicy_version: pol-file\n")
    s = load(
        env={"SIDECAR_MODEL_VERSION": "from-env"},
        flags={"model_version": "from-flag"},
        config_path=path,
    )
    assert s.model_version == "from-flag"
    # No flag or env var for policy_version: the file wins over "required, no default".
    assert load(config_path=path, identity=False, env={
        "SIDECAR_MODEL_NAME": "m", "SIDECAR_MODEL_VERSION": "1",
        "SIDECAR_EVIDENCE_BUNDLE_ID": "e",
    }).policy_version == "pol-file"


def test_required_keys_can_all_come_from_the_file(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "model_name: m\nmodel_version: '1.0'\npolicy_version: p\nevidence_bundle_id: e\n",
    )
    s = load(config_path=path, identity=False)
    assert s.identity == {
        "model_name": "m", "model_version": "1.0", "policy_version": "p",
        "evidence_bundle_id": "e",
    }


def test_flag_set_to_none_falls_through_to_env() -> None:
    # argparse leaves unset flags as None: they must not shadow the environment.
    s = load(env={"SIDECAR_LOG_LEVEL": "debug"}, flags={"log_level": None, "listen": None})
    assert s.log_level == "debug"
    assert s.listen == ("0.0.0.0", 8080)


def test_flags_may_be_none() -> None:
    s = load_settings(None, None, dict(IDENTITY_ENV))
    assert s.model_name == "credit-scorer"


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in IDENTITY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SIDECAR_MAX_HEADERS", "42")
    s = load_settings()
    assert s.max_headers == 42
    assert s.model_version == "2.4.1"


def test_unrelated_environment_variables_are_ignored() -> None:
    s = load(env={"SIDECAR_NOT_A_SETTING": "x", "UPSTREAM_URL": "ftp://nope", "LISTEN": "bad"})
    assert s.upstream_url == "http://127.0.0.1:8000"


# --- SIDECAR_CONFIG ---------------------------------------------------------------------


def test_sidecar_config_env_var_picks_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_headers: 12\n")
    assert load(env={"SIDECAR_CONFIG": path}).max_headers == 12


def test_sidecar_config_from_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_yaml(tmp_path, "max_headers: 13\n")
    for name, value in IDENTITY_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SIDECAR_CONFIG", path)
    assert load_settings().max_headers == 13


def test_explicit_config_path_beats_sidecar_config(tmp_path: Path) -> None:
    explicit = write_yaml(tmp_path, "max_headers: 1\n", "explicit.yaml")
    from_env = write_yaml(tmp_path, "max_headers: 2\n", "env.yaml")
    assert load(env={"SIDECAR_CONFIG": from_env}, config_path=explicit).max_headers == 1


def test_empty_sidecar_config_means_no_file() -> None:
    assert load(env={"SIDECAR_CONFIG": ""}).max_headers == 100


def test_sidecar_config_pointing_nowhere_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_CONFIG": missing})
    assert missing in str(info.value)


# --- sizes ------------------------------------------------------------------------------

SIZE_OK = [
    ("65536", 65536),
    ("10MiB", 10 * 1024**2),
    ("8KiB", 8 * 1024),
    ("1GiB", 1024**3),
    ("1k", 1000),
    ("1K", 1000),
    ("2kb", 2000),
    ("3MB", 3_000_000),
    ("4m", 4_000_000),
    ("1G", 1_000_000_000),
    ("1gb", 1_000_000_000),
    ("512b", 512),
    ("1.5KiB", 1536),
    (" 2 mib ", 2 * 1024**2),
    (".5KiB", 512),
]


@pytest.mark.parametrize(("raw", "expected"), SIZE_OK)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_size_values_parse(tmp_path: Path, raw: str, expected: int, via: str) -> None:
    value = load_one("max_body_bytes", raw, via, tmp_path)
    assert value == expected
    assert isinstance(value, int)


@pytest.mark.parametrize(("raw", "expected"), [(4096, 4096), (2.0, 2), (1e6, 1_000_000)])
def test_size_from_yaml_numbers(tmp_path: Path, raw: Any, expected: int) -> None:
    assert load_one("buffer_response_bytes", raw, "file", tmp_path) == expected


SIZE_BAD = ["", "   ", "abc", "10XB", "-5", "0", "0KiB", "KiB", "10 MiB extra", "1e6", "1,000",
            "10 Mi B", "0x10"]


@pytest.mark.parametrize("raw", SIZE_BAD)
def test_size_rejects_garbage_with_a_clear_message(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_MAX_BODY_BYTES": raw})
    message = str(info.value)
    assert "environment variable SIDECAR_MAX_BODY_BYTES" in message
    assert "a positive size such as 10MiB, 8KiB or 65536" in message
    assert repr(raw) in message


@pytest.mark.parametrize("raw", [True, False, None, [1], {"a": 1}])
def test_size_rejects_non_scalar_yaml(tmp_path: Path, raw: Any) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({"max_header_bytes": raw}))
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert f"config file {path}, key 'max_header_bytes'" in str(info.value)
    assert "positive size" in str(info.value)


@pytest.mark.parametrize("raw", ["0.5", "0.9b"])
def test_size_that_rounds_down_to_zero_bytes_is_rejected(raw: str) -> None:
    # A size is a whole, positive number of bytes: "0.5" must not become a 0-byte limit
    # (a 0-byte max_body_bytes would reject every request body).
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_MAX_BODY_BYTES": raw})
    assert "SIDECAR_MAX_BODY_BYTES" in str(info.value)


def test_size_too_large_for_a_float_is_a_config_error_from_env() -> None:
    huge = "9" * 400  # float() of this is inf
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_MAX_BODY_BYTES": huge})
    assert "SIDECAR_MAX_BODY_BYTES" in str(info.value)


@pytest.mark.parametrize("text", [".inf", ".nan", "1" + "0" * 400],
                         ids=["inf", "nan", "huge-int"])
def test_non_finite_or_huge_yaml_size_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, f"max_body_bytes: {text}\n")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert "max_body_bytes" in str(info.value)
    assert "positive size" in str(info.value)


_UNIT_FACTORS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2,
                 "mb": 1000**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


@st.composite
def _size_text(draw: st.DrawFn) -> tuple[str, int]:
    number = draw(st.integers(min_value=1, max_value=10**6))
    unit = draw(st.sampled_from(sorted(_UNIT_FACTORS)))
    cased = "".join(c.upper() if draw(st.booleans()) else c for c in unit)
    pad = draw(st.sampled_from(["", " ", "  "]))
    return f"{pad}{number}{pad}{cased}{pad}", number * _UNIT_FACTORS[unit]


@given(_size_text())
def test_property_any_integer_with_a_unit_parses_to_the_exact_byte_count(
    case: tuple[str, int],
) -> None:
    text, expected = case
    assert load(env={"SIDECAR_MAX_BODY_BYTES": text}).max_body_bytes == expected


# --- durations --------------------------------------------------------------------------

DURATION_OK = [
    ("30s", 30.0),
    ("250ms", 0.25),
    ("2.5", 2.5),
    ("2m", 120.0),
    ("1min", 60.0),
    ("1h", 3600.0),
    (" 5 S ", 5.0),
    ("100MS", 0.1),
    ("0.001", 0.001),
]


@pytest.mark.parametrize(("raw", "expected"), DURATION_OK)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_duration_values_parse(tmp_path: Path, raw: str, expected: float, via: str) -> None:
    value = load_one("read_timeout", raw, via, tmp_path)
    assert value == pytest.approx(expected)
    assert isinstance(value, float)


@pytest.mark.parametrize(("raw", "expected"), [(3, 3.0), (0.5, 0.5)])
def test_duration_from_yaml_numbers(tmp_path: Path, raw: Any, expected: float) -> None:
    assert load_one("connect_timeout", raw, "file", tmp_path) == expected


@pytest.mark.parametrize("raw", ["0", "0s", "-1s", "fast", "10d", "", "1s2", "s", "ms"])
def test_duration_rejects_garbage(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={"drain_timeout": raw})
    message = str(info.value)
    assert "flag --drain-timeout" in message
    assert "a positive duration such as 30s, 250ms or 2.5" in message


@pytest.mark.parametrize("raw", [True, None, [1]])
def test_duration_rejects_non_numbers_from_yaml(tmp_path: Path, raw: Any) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({"idle_timeout": raw}))
    with pytest.raises(ConfigError, match="positive duration"):
        load(config_path=path)


def test_duration_nan_from_yaml_is_rejected(tmp_path: Path) -> None:
    # nan passes a "<= 0" check; a NaN timeout must not be accepted as "positive".
    path = write_yaml(tmp_path, "connect_timeout: .nan\n")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert "connect_timeout" in str(info.value)


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(["ms", "s", "m", "min", "h"]))
def test_property_durations_scale_by_their_unit(number: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[unit]
    value = load(env={"SIDECAR_TOTAL_TIMEOUT": f"{number}{unit}"}).total_timeout
    assert value == pytest.approx(number * factor)


# --- host:port --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("  sidecar.local:81  ", ("sidecar.local", 81)),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_host_port_parses(
    tmp_path: Path, raw: str, expected: tuple[str, int], via: str
) -> None:
    assert load_one("listen", raw, via, tmp_path) == expected


@pytest.mark.parametrize(
    "raw", ["nonsense", "127.0.0.1", ":8080", "host:", "host:65536", "host:-1", "host:http",
            "", "[]:80", "host:80x"],
)
def test_host_port_rejects_garbage(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_ADMIN_LISTEN": raw})
    message = str(info.value)
    assert "environment variable SIDECAR_ADMIN_LISTEN" in message
    if raw.strip():
        assert "host:port, such as 0.0.0.0:8080" in message
    else:
        assert "non-empty string" in message


def test_host_port_from_a_bare_yaml_integer_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "listen: 8080\n")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert f"config file {path}, key 'listen'" in str(info.value)
    assert "host:port" in str(info.value)


def test_host_port_with_unicode_superscript_digits_says_what_was_expected() -> None:
    raw = "host:\u00b2"
    # str.isdigit() accepts superscripts that int() refuses: the operator must still be told
    # "host:port", not Python's int() error text.
    with pytest.raises(ConfigError) as info:
        load(flags={"listen": raw})
    assert "host:port" in str(info.value)
    assert "invalid literal" not in str(info.value)


# --- URLs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("https://models.internal", "https://models.internal"),
        ("http://model:8000/", "http://model:8000"),
        ("http://model:8000/base///", "http://model:8000/base"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("  http://m:1  ", "http://m:1"),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_upstream_url_parses(tmp_path: Path, raw: str, expected: str, via: str) -> None:
    assert load_one("upstream_url", raw, via, tmp_path) == expected


@pytest.mark.parametrize(
    ("raw", "expected_text"),
    [
        ("ftp://model:21", "an http:// or https:// URL"),
        ("127.0.0.1:8000", "an http:// or https:// URL"),
        ("http://", "an http:// or https:// URL"),
        ("model", "an http:// or https:// URL"),
        ("http://h:99999", "an http:// or https:// URL with a valid port"),
        ("http://h:port", "an http:// or https:// URL with a valid port"),
        ("", "a non-empty string"),
    ],
)
def test_upstream_url_rejects_garbage(raw: str, expected_text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_UPSTREAM_URL": raw})
    message = str(info.value)
    assert message.startswith("environment variable SIDECAR_UPSTREAM_URL: expected ")
    assert expected_text in message


def test_upstream_url_with_a_broken_ipv6_host_says_what_was_expected() -> None:
    # urlsplit raises its own ValueError ("Invalid IPv6 URL"); the operator must still be
    # told that an http:// or https:// URL was expected.
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_UPSTREAM_URL": "http://[::1"})
    assert "http:// or https:// URL" in str(info.value)


# --- booleans ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
     ("0", False), ("false", False), ("False", False), ("no", False), ("off", False)],
)
@pytest.mark.parametrize("via", ["flag", "env"])
def test_bools_parse(tmp_path: Path, raw: str, expected: bool, via: str) -> None:
    assert load_one("stamp_body", raw, via, tmp_path) is expected


@pytest.mark.parametrize(("raw", "expected"), [(True, True), (False, False), (1, True), (0, False)])
def test_bools_from_yaml(tmp_path: Path, raw: Any, expected: bool) -> None:
    assert load_one("replace_upstream_errors", raw, "file", tmp_path) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "", "y e s", "truee"])
def test_bools_reject_garbage(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_STAMP_BODY": raw})
    assert "environment variable SIDECAR_STAMP_BODY: expected true or false" in str(info.value)


# --- choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("when_full", "drop_newest", "drop_newest"),
        ("when_full", "DROP_OLDEST", "drop_oldest"),
        ("when_full", " block ", "block"),
        ("durability", "batch", "batch"),
        ("durability", "MEMORY", "memory"),
        ("durability", "sync", "sync"),
        ("kafka_security_protocol", "SSL", "ssl"),
        ("kafka_security_protocol", "plaintext", "plaintext"),
        ("kafka_compression", "lz4", "lz4"),
        ("kafka_compression", "ZSTD", "zstd"),
        ("kafka_compression", "none", "none"),
        ("log_level", "DEBUG", "debug"),
        ("log_level", "warning", "warning"),
        ("log_level", "error", "error"),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_choices_parse(tmp_path: Path, key: str, raw: str, expected: str, via: str) -> None:
    assert load_one(key, raw, via, tmp_path) == expected


@pytest.mark.parametrize(
    ("key", "raw", "allowed"),
    [
        ("when_full", "drop_all", "one of block, drop_oldest, drop_newest"),
        ("when_full", "", "one of block, drop_oldest, drop_newest"),
        ("durability", "fsync", "one of sync, batch, memory"),
        ("durability", "disk", "one of sync, batch, memory"),
        ("kafka_security_protocol", "tls",
         "one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
        ("kafka_compression", "brotli", "one of auto, none, gzip, lz4, zstd, snappy"),
        ("kafka_sasl_mechanism", "gssapi", "one of plain, scram-sha-256, scram-sha-512"),
        ("log_level", "verbose", "one of debug, info, warning, error"),
        ("log_level", "warn", "one of debug, info, warning, error"),
    ],
)
def test_choices_reject_other_values(key: str, raw: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={key: raw})
    assert f"flag {flag_name(key)}: expected {allowed}, got {raw!r}" == str(info.value)


# --- positive integers ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("100", 100), (" 7 ", 7), ("1", 1)])
def test_positive_int_parses(raw: str, expected: int) -> None:
    assert load(env={"SIDECAR_MAX_HEADERS": raw}).max_headers == expected


def test_positive_int_from_yaml(tmp_path: Path) -> None:
    assert load_one("upstream_max_connections", 64, "file", tmp_path) == 64


@pytest.mark.parametrize("raw", ["0", "-1", "1.5", "ten", "", "1e3", "0x10"])
def test_positive_int_rejects_garbage(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_EVENT_QUEUE_SIZE": raw})
    assert "SIDECAR_EVENT_QUEUE_SIZE: expected a positive integer" in str(info.value)


@pytest.mark.parametrize("raw", [True, 2.5, None, [1]])
def test_positive_int_rejects_non_integers_from_yaml(tmp_path: Path, raw: Any) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({"max_headers": raw}))
    with pytest.raises(ConfigError, match="expected a positive integer"):
        load(config_path=path)


# --- route lists ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/{name}/predict", ("/v1/{name}/predict",)),
        ("/v1/{name}/predict, /v2/models/{model}/infer", (
            "/v1/{name}/predict", "/v2/models/{model}/infer")),
        ("/a,,/b,", ("/a", "/b")),
        (" , ", ()),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env"])
def test_route_lists_from_strings(
    tmp_path: Path, raw: str, expected: tuple[str, ...], via: str
) -> None:
    assert load_one("routes", raw, via, tmp_path) == expected


def test_route_list_from_a_yaml_list(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "routes:\n  - /v1/{name}/predict\n  - ' /health '\n")
    assert load(config_path=path).routes == ("/v1/{name}/predict", "/health")


def test_route_list_empty_yaml_list(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "routes: []\n")
    assert load(config_path=path).routes == ()


def test_route_without_leading_slash_is_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_ROUTES": "/ok, v1/predict"})
    assert "SIDECAR_ROUTES: expected route templates that start with '/'" in str(info.value)


@pytest.mark.parametrize("text", ["routes: [1, 2]\n", "routes: {a: /b}\n", "routes: 5\n",
                                  "routes:\n"])
def test_route_list_rejects_non_string_lists(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert f"config file {path}, key 'routes'" in str(info.value)
    assert "a list of route templates such as /v1/{name}/predict" in str(info.value)


# --- text and optional text -------------------------------------------------------------


def test_text_values_are_stripped() -> None:
    assert load(env={"SIDECAR_MODEL_NAME": "  scorer  "}).model_name == "scorer"


def test_numeric_yaml_text_becomes_a_string(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "model_version: 3\n")
    s = load(config_path=path, identity=False, env={
        "SIDECAR_MODEL_NAME": "m", "SIDECAR_POLICY_VERSION": "p",
        "SIDECAR_EVIDENCE_BUNDLE_ID": "e",
    })
    assert s.model_version == "3"


def test_numbers_in_yaml_text_keep_the_text_they_were_written_as(tmp_path: Path) -> None:
    """The stamped identity is what the operator wrote, not what YAML makes of it."""
    path = write_yaml(tmp_path, "model_name: m\nmodel_version: 1.10\npolicy_version: 0x1F\n"
                                "evidence_bundle_id: 1_000\nmax_body_bytes: 2048\n")
    s = load(config_path=path, identity=False)
    assert (s.model_version, s.policy_version, s.evidence_bundle_id) == ("1.10", "0x1F", "1_000")
    assert s.max_body_bytes == 2048  # numbers stay numbers where numbers are expected


@pytest.mark.parametrize("via", ["flag", "env", "file"])
@pytest.mark.parametrize("raw", ["v1\nx-injected: 1", "v1\rx", "a\tb", "nul\x00"])
def test_control_characters_in_text_are_rejected(raw: str, via: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_one("stamp_body_key", raw, via, tmp_path)
    assert "without control characters" in str(info.value)


@pytest.mark.parametrize("via", ["flag", "env", "file"])
@pytest.mark.parametrize("key", ["model_version", "model_name", "stamp_body_key"])
def test_text_that_is_not_utf8_is_rejected(key: str, via: str, tmp_path: Path) -> None:
    # Bytes that are not UTF-8 in an environment variable or argument reach Python as
    # surrogate escapes (YAML writes them "\udce9"); accepted, they failed every event's
    # JSON and every response.
    values = {**dict(zip(REQUIRED_KEYS, ("m", "1", "p", "e"), strict=True)),
              key: "v1-\udce9"}
    with pytest.raises(ConfigError) as info:
        if via == "file":
            load(config_path=write_yaml(tmp_path, yaml.safe_dump(values)), identity=False)
        elif via == "env":
            load(env={env_name(k): v for k, v in values.items()}, identity=False)
        else:
            load(flags=values, identity=False)
    assert "expected UTF-8 text" in str(info.value)


def test_text_that_is_not_utf8_in_the_process_environment_is_one_line_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env.update(SIDECAR_MODEL_NAME="m", SIDECAR_POLICY_VERSION="p",
               SIDECAR_EVIDENCE_BUNDLE_ID="e")
    environb = {k.encode(): v.encode() for k, v in env.items()}
    environb[b"SIDECAR_MODEL_VERSION"] = b"v1-\xe9"  # Latin-1, not UTF-8
    result = subprocess.run([sys.executable, "-m", "sidecar", "check-config"], env=environb,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr
    assert (b"environment variable SIDECAR_MODEL_VERSION: expected UTF-8 text"
            in result.stderr), result.stderr


@pytest.mark.parametrize("url", ["https://svc:S3cretPass@model:8000",
                                 "http://svc:S3cretPass@model:99999", "http://svc:S3cretPass@[::1",
                                 "http://svc:S3cretPass@model\t:8000"])
def test_upstream_url_with_credentials_is_refused_without_quoting_them(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_UPSTREAM_URL": url})
    assert "without user:password@" in str(info.value)
    assert "S3cretPass" not in str(info.value) and "svc" not in str(info.value)


@pytest.mark.parametrize("url", ["http://model:8000/v1?key=x", "http://model:8000/#top"])
def test_upstream_url_with_query_or_fragment_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"without \?query or #fragment"):
        load(env={"SIDECAR_UPSTREAM_URL": url})


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_text_from_env_is_rejected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_MODEL_VERSION": raw})
    assert "environment variable SIDECAR_MODEL_VERSION: expected a non-empty string" in str(
        info.value
    )


@pytest.mark.parametrize("raw", [True, [1, 2], {"a": 1}, None])
def test_non_scalar_yaml_text_is_rejected(tmp_path: Path, raw: Any) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({"events_file": raw}))
    with pytest.raises(ConfigError, match="key 'events_file': expected a non-empty string"):
        load(config_path=path)


def test_optional_text_empty_means_none() -> None:
    assert load(env={"SIDECAR_UPSTREAM_HEALTH_PATH": ""}).upstream_health_path is None
    assert load(env={"SIDECAR_UPSTREAM_HEALTH_PATH": "/health"}).upstream_health_path == (
        "/health"
    )


# --- pipeline, durability and Kafka settings: their parsers ----------------------------


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("wal_max_bytes", "2GiB", 2 * 1024**3),
        ("wal_max_bytes", "64MiB", 64 * 1024**2),
        ("wal_segment_bytes", "1MiB", 1024**2),
        ("wal_segment_bytes", "65536", 65536),
        ("durability_interval", "10ms", 0.01),
        ("durability_interval", "1s", 1.0),
        ("durability_timeout", "250ms", 0.25),
        ("durability_timeout", "2.5", 2.5),
        ("kafka_delivery_timeout", "1m", 60.0),
        ("event_queue_size", "1024", 1024),
    ],
)
@pytest.mark.parametrize("via", ["flag", "env", "file"])
def test_new_numeric_settings_parse(
    tmp_path: Path, key: str, raw: str, expected: float, via: str
) -> None:
    assert load_one(key, raw, via, tmp_path) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("wal_max_bytes", "0", "a positive size"),
        ("wal_segment_bytes", "lots", "a positive size"),
        ("durability_interval", "0s", "a positive duration"),
        ("durability_timeout", "-1", "a positive duration"),
        ("kafka_delivery_timeout", "forever", "a positive duration"),
        ("wal_dir", "  ", "a non-empty string"),
        ("kafka_events_topic", "", "a non-empty string"),
        ("kafka_alerts_topic", " ", "a non-empty string"),
    ],
)
def test_new_settings_reject_garbage_naming_the_variable(
    key: str, raw: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={env_name(key): raw})
    message = str(info.value)
    assert message.startswith(f"environment variable {env_name(key)}: expected {expected}")
    assert message.endswith(f"got {raw!r}")


def test_text_settings_of_the_pipeline(tmp_path: Path) -> None:
    s = load(env={
        "SIDECAR_WAL_DIR": f" {tmp_path}/wal ",
        "SIDECAR_KAFKA_BOOTSTRAP": "127.0.0.1:9092,127.0.0.1:9093",
        "SIDECAR_KAFKA_EVENTS_TOPIC": "ev",
        "SIDECAR_KAFKA_ALERTS_TOPIC": "al",
    })
    assert s.wal_dir == f"{tmp_path}/wal"
    assert s.kafka_bootstrap == "127.0.0.1:9092,127.0.0.1:9093"
    assert s.kafka_events_topic == "ev"
    assert s.kafka_alerts_topic == "al"


@pytest.mark.parametrize(
    "key",
    ["kafka_bootstrap", "kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
     "kafka_sasl_mechanism", "kafka_sasl_username_file", "kafka_sasl_password_file"],
)
def test_optional_kafka_settings_empty_means_unset(key: str) -> None:
    assert getattr(load(env={env_name(key): ""}), key) is None


def test_optional_kafka_settings_null_in_yaml_means_unset(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "kafka_bootstrap: null\nkafka_sasl_mechanism: null\n")
    s = load(config_path=path)
    assert s.kafka_bootstrap is None
    assert s.kafka_sasl_mechanism is None


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, str]:
    """Readable files for every secret-file setting (mounted secrets in production)."""
    out = {}
    for key in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
                "kafka_sasl_username_file", "kafka_sasl_password_file"):
        path = tmp_path / f"{key}.secret"
        path.write_text("value\n", encoding="utf-8")
        out[key] = str(path)
    return out


def sasl_env(secrets: dict[str, str], **extra: str) -> dict[str, str]:
    return {
        "SIDECAR_KAFKA_SASL_USERNAME_FILE": secrets["kafka_sasl_username_file"],
        "SIDECAR_KAFKA_SASL_PASSWORD_FILE": secrets["kafka_sasl_password_file"],
        **extra,
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("plain", "plain"), ("SCRAM-SHA-256", "scram-sha-256"), (" scram-sha-512 ", "scram-sha-512")],
)
def test_sasl_mechanism_parses(secrets: dict[str, str], raw: str, expected: str) -> None:
    s = load(env=sasl_env(secrets, SIDECAR_KAFKA_SASL_MECHANISM=raw))
    assert s.kafka_sasl_mechanism == expected


def test_a_full_kafka_tls_and_sasl_configuration_loads(
    tmp_path: Path, secrets: dict[str, str]
) -> None:
    path = write_yaml(tmp_path, yaml.safe_dump({
        "kafka_bootstrap": "127.0.0.1:9093",
        "kafka_security_protocol": "sasl_ssl",
        "kafka_sasl_mechanism": "scram-sha-512",
        **secrets,
    }))
    s = load(config_path=path)
    assert s.kafka_security_protocol == "sasl_ssl"
    assert s.kafka_sasl_mechanism == "scram-sha-512"
    for key, value in secrets.items():
        assert getattr(s, key) == value


# --- cross-checks: rules over more than one setting -------------------------------------


def test_wal_segment_bytes_may_be_half_of_wal_max_bytes() -> None:
    s = load(env={"SIDECAR_WAL_MAX_BYTES": "2MiB", "SIDECAR_WAL_SEGMENT_BYTES": "1MiB"})
    assert (s.wal_max_bytes, s.wal_segment_bytes) == (2 * 1024**2, 1024**2)


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_wal_segment_bytes_above_half_of_wal_max_bytes_is_rejected(durability: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_WAL_MAX_BYTES": "2MiB", "SIDECAR_WAL_SEGMENT_BYTES": "1048577",
                  "SIDECAR_DURABILITY": durability})
    assert str(info.value) == (
        f"environment variable SIDECAR_WAL_SEGMENT_BYTES: expected at most half of "
        f"wal_max_bytes ({2 * 1024**2}), got 1048577"
    )


def test_the_default_wal_max_bytes_bounds_a_large_segment() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable SIDECAR_WAL_SEGMENT_BYTES: "
                                          r"expected at most half"):
        load(env={"SIDECAR_WAL_SEGMENT_BYTES": "768MiB"})


def test_segment_rule_does_not_apply_without_a_disk() -> None:
    # durability: memory has no segments: the rule would only get in the way.
    s = load(env={"SIDECAR_WAL_MAX_BYTES": "1MiB", "SIDECAR_WAL_SEGMENT_BYTES": "8MiB",
                  "SIDECAR_DURABILITY": "memory"})
    assert s.durability == "memory"


def test_an_in_memory_log_too_small_for_an_event_is_rejected() -> None:
    # It passed check-config; then the first event never fitted, later requests got 503
    # and SIGTERM waited the whole drain timeout.
    with pytest.raises(ConfigError, match=r"^flag --wal-max-bytes: expected at least 65536"):
        load(flags={"durability": "memory", "wal_max_bytes": "100"})
    assert load(flags={"durability": "memory", "wal_max_bytes": "64KiB"}).wal_max_bytes == 65536


def test_a_config_file_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "routes: " + "[" * 500 + "]" * 500 + "\n")  # RecursionError
    with pytest.raises(ConfigError, match=r"not valid YAML: nested too deeply$"):
        load(config_path=path)


def test_wal_segment_bytes_too_small_for_any_record_is_rejected() -> None:
    # The write-ahead log refuses a segment that cannot hold a single record (ValueError
    # at start-up); check-config must say so first, naming the key.
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_WAL_MAX_BYTES": "64KiB", "SIDECAR_WAL_SEGMENT_BYTES": "16"})
    assert str(info.value).startswith(
        "environment variable SIDECAR_WAL_SEGMENT_BYTES: expected ")


@pytest.mark.parametrize("protocol", ["sasl_plaintext", "sasl_ssl"])
def test_a_sasl_security_protocol_needs_a_mechanism(protocol: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_KAFKA_SECURITY_PROTOCOL": protocol})
    assert str(info.value) == (  # the mechanism is not set: the error says so
        f"kafka_sasl_mechanism (not set): expected a mechanism for security protocol {protocol}"
    )


@pytest.mark.parametrize("protocol", ["sasl_plaintext", "SASL_SSL"])
def test_a_sasl_security_protocol_with_mechanism_and_files_loads(
    secrets: dict[str, str], protocol: str
) -> None:
    s = load(env=sasl_env(secrets, SIDECAR_KAFKA_SECURITY_PROTOCOL=protocol,
                          SIDECAR_KAFKA_SASL_MECHANISM="plain"))
    assert s.kafka_security_protocol == protocol.lower()


@pytest.mark.parametrize("protocol", ["plaintext", "ssl"])
def test_non_sasl_protocols_need_no_mechanism(protocol: str) -> None:
    s = load(env={"SIDECAR_KAFKA_SECURITY_PROTOCOL": protocol})
    assert s.kafka_sasl_mechanism is None


@pytest.mark.parametrize("missing", ["kafka_sasl_username_file", "kafka_sasl_password_file"])
def test_a_sasl_mechanism_needs_both_credential_files(
    secrets: dict[str, str], missing: str
) -> None:
    env = sasl_env(secrets, SIDECAR_KAFKA_SASL_MECHANISM="scram-sha-256")
    del env[env_name(missing)]
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert str(info.value) == (
        f"{missing} (not set): expected a file path, since SASL is configured")


def test_a_sasl_mechanism_with_neither_credential_file_names_the_user_name_first() -> None:
    with pytest.raises(ConfigError,
                       match=r"^kafka_sasl_username_file \(not set\): expected a file path"):
        load(env={"SIDECAR_KAFKA_SASL_MECHANISM": "plain"})


@pytest.mark.parametrize(
    "key",
    ["kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile",
     "kafka_sasl_username_file", "kafka_sasl_password_file"],
)
def test_an_unreadable_secret_file_names_the_key(
    tmp_path: Path, secrets: dict[str, str], key: str
) -> None:
    missing = str(tmp_path / "not-mounted" / "secret")
    env = sasl_env(secrets, SIDECAR_KAFKA_SASL_MECHANISM="plain")
    env[env_name(key)] = missing
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert str(info.value) == (
        f"environment variable {env_name(key)}: expected a readable file, cannot read {missing}")


@pytest.mark.parametrize("key", ["kafka_ssl_cafile", "kafka_sasl_password_file"])
def test_a_directory_is_not_a_readable_secret_file(
    tmp_path: Path, secrets: dict[str, str], key: str
) -> None:
    # A secret volume mounted at the file's path is a directory: check-config must catch
    # it (the message says "expected a readable file").
    env = sasl_env(secrets, SIDECAR_KAFKA_SASL_MECHANISM="plain")
    env[env_name(key)] = str(tmp_path)
    with pytest.raises(ConfigError) as info:
        load(env=env)
    assert str(info.value).startswith(
        f"environment variable {env_name(key)}: expected a readable file")


def test_a_nul_byte_in_a_secret_file_path_is_a_config_error(tmp_path: Path) -> None:
    # YAML spells a NUL byte as \0 in a double-quoted string (os.access() would raise
    # ValueError on it): the one-line ConfigError naming the file and the key.
    path = write_yaml(tmp_path, 'kafka_ssl_cafile: "ca\\0.pem"\n')
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value).startswith(f"config file {path}, key 'kafka_ssl_cafile': expected a "
                                      "string without control characters")


def test_readable_secret_files_are_accepted(secrets: dict[str, str]) -> None:
    env = {env_name(k): v for k, v in secrets.items()}
    env["SIDECAR_KAFKA_SASL_MECHANISM"] = "plain"
    s = load(env=env)
    assert s.kafka_ssl_cafile == secrets["kafka_ssl_cafile"]
    assert s.kafka_sasl_password_file == secrets["kafka_sasl_password_file"]


def test_cross_checks_see_the_merged_sources(tmp_path: Path, secrets: dict[str, str]) -> None:
    # The protocol comes from the file, the mechanism from a flag, the files from the
    # environment: the rules apply to the merged settings.
    path = write_yaml(tmp_path, "kafka_security_protocol: sasl_ssl\n")
    with pytest.raises(ConfigError, match="kafka_sasl_mechanism"):
        load(config_path=path)
    s = load(env=sasl_env(secrets), flags={"kafka_sasl_mechanism": "plain"}, config_path=path)
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("sasl_ssl", "plain")


# --- missing and invalid values: the messages ------------------------------------------


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_setting_names_key_env_var_and_flag(key: str) -> None:
    env = {k: v for k, v in IDENTITY_ENV.items() if k != env_name(key)}
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, env)
    message = str(info.value)
    assert f"missing required setting {key!r}" in message
    assert env_name(key) in message
    assert flag_name(key) in message


def test_missing_required_setting_with_nothing_set_names_the_first() -> None:
    with pytest.raises(ConfigError, match="'model_name'"):
        load_settings(None, {}, {})


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("via", "source"),
    [
        ("flag", "flag --listen"),
        ("env", "environment variable SIDECAR_LISTEN"),
        ("file", "config file {path}, key 'listen'"),
    ],
)
def test_invalid_value_message_names_source_and_expectation(
    tmp_path: Path, via: str, source: str
) -> None:
    path = write_yaml(tmp_path, "listen: nonsense\n")
    with pytest.raises(ConfigError) as info:
        if via == "flag":
            load(flags={"listen": "nonsense"})
        elif via == "env":
            load(env={"SIDECAR_LISTEN": "nonsense"})
        else:
            load(config_path=path)
    assert str(info.value) == (
        f"{source.format(path=path)}: expected host:port, such as 0.0.0.0:8080, "
        "got 'nonsense'"
    )


def test_error_names_the_winning_source_not_a_shadowed_one(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_headers: 5\n")
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_MAX_HEADERS": "many"}, config_path=path)
    assert "environment variable SIDECAR_MAX_HEADERS" in str(info.value)
    assert "config file" not in str(info.value)


def test_a_valid_higher_source_hides_an_invalid_lower_one(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_headers: many\n")
    assert load(env={"SIDECAR_MAX_HEADERS": "5"}, config_path=path).max_headers == 5


# --- the config file --------------------------------------------------------------------


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "max_headers: 5\nupstream_ulr: http://typo:1\n")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value) == (f"config file {path}: unknown key 'upstream_ulr'; "
                               "did you mean 'upstream_url'?")


def test_unknown_non_string_key_in_file_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "1: x\n")
    with pytest.raises(ConfigError, match="unknown key '1'"):
        load(config_path=path)


def test_config_key_itself_is_not_a_file_setting(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "config: other.yaml\n")
    with pytest.raises(ConfigError, match="unknown key 'config'"):
        load(config_path=path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "[]\n"])
def test_non_mapping_yaml_is_rejected(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value) == (
        f"config file {path}: expected a mapping of settings at the top level"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_yaml_means_no_settings(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path, text)
    assert load(config_path=path) == load()


@pytest.mark.parametrize(
    ("text", "line"),
    [("max_headers: 5\nlisten: a: b\n", 2), ("routes: [/a, /b\n", 2), ("\tmax_headers: 1\n", 1)],
)
def test_invalid_yaml_names_file_and_line(tmp_path: Path, text: str, line: int) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value).startswith(f"config file {path}: not valid YAML: ")
    assert str(info.value).endswith(f" at line {line}")


@pytest.mark.parametrize(("text", "said"), [
    ("log_level: info\n---\nlog_level: debug\n",
     "expected a single document in the stream, but found another document at line 2"),
    ("model_name: !!python/object:os.system x\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system'"),
])
def test_invalid_yaml_says_what_is_wrong(tmp_path: Path, text: str, said: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value).startswith(f"config file {path}: not valid YAML: {said}")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        load(config_path=path)
    assert str(info.value) == f"config file {path}: cannot read it (No such file or directory)"


def test_directory_as_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(config_path=str(tmp_path))
    assert str(info.value).startswith(f"config file {tmp_path}: cannot read it (")


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model_name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load(config_path=str(path))
    assert str(path) in str(info.value)


# --- property: garbage in, ConfigError (or a valid Settings) out ------------------------

_NUMERIC_KEYS = [k for k, f in SETTINGS_FIELDS.items() if f.type in ("int", "float")]

_garbage_text = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A\s?-?[0-9]{0,400}\.?[0-9]{0,3}\s?[a-zA-Z]{0,3}\s?\Z"),
    st.from_regex(r"\A[a-z]{0,6}://[\[\]a-z0-9:.]{0,12}(:[0-9]{0,6})?/?\Z"),
    st.sampled_from(["", " ", ":", "[]", "0", "-0", "inf", "nan", "1e999", "\x00", "\u00b2"]),
)
_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)


def _check_accepted(s: Settings) -> None:
    """Whatever load_settings accepts must be a usable value: positive, never NaN, and
    consistent with the cross-checks.

    An infinite duration ("no timeout") is tolerated: asyncio and aiohttp accept it.
    """
    assert "wal_max_bytes" in _NUMERIC_KEYS and "durability_timeout" in _NUMERIC_KEYS
    for key in _NUMERIC_KEYS:
        value = getattr(s, key)
        assert not math.isnan(value), (key, value)
        assert value > 0, (key, value)
    if s.durability != "memory":
        assert s.wal_segment_bytes * 2 <= s.wal_max_bytes
    if s.kafka_security_protocol.startswith("sasl"):
        assert s.kafka_sasl_mechanism is not None


def _names_a_setting(message: str) -> bool:
    """Cross-check errors start with the key they are about and its source: ``key
    (default): expected ...`` for one left at its default."""
    return message.split(":", 1)[0].split(" (", 1)[0] in SETTINGS_FIELDS


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(SETTINGS_FIELDS)), raw=_garbage_text)
def test_property_garbage_env_values_raise_only_config_error(key: str, raw: str) -> None:
    try:
        s = load(env={env_name(key): raw})
    except ConfigError as exc:
        assert env_name(key) in str(exc) or _names_a_setting(str(exc)), str(exc)
    else:
        _check_accepted(s)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(SETTINGS_FIELDS)), raw=_yaml_values)
def test_property_garbage_yaml_values_raise_only_config_error(key: str, raw: Any) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_yaml(Path(directory), yaml.safe_dump({key: raw}))
        try:
            s = load(config_path=path)
        except ConfigError as exc:
            message = str(exc)
            assert (path in message and repr(key) in message) or _names_a_setting(message), (
                message)
        else:
            _check_accepted(s)


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_property_garbage_yaml_documents_raise_only_config_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = write_yaml(Path(directory), text)
        try:
            load(config_path=path)
        except ConfigError as exc:
            assert path in str(exc)


@pytest.mark.parametrize("url", ["http://model:8000/v1?api_key=sk-S3cretKey",
                                 "http://svc:pa/ss-S3cretKey@model:8000",
                                 "http://model:99999/?token=S3cretKey",
                                 "ftp://model/?token=S3cretKey"])
def test_no_upstream_url_error_quotes_the_value(url: str) -> None:
    # a URL may hold a key in its query, or a password the "@" check misses (a "/" in it)
    with pytest.raises(ConfigError) as info:
        load(env={"SIDECAR_UPSTREAM_URL": url})
    assert "S3cretKey" not in str(info.value) and "SIDECAR_UPSTREAM_URL" in str(info.value)


def test_a_duplicate_key_in_the_file_is_an_error_naming_it(tmp_path: Path) -> None:
    # YAML keeps the last value silently: a second model_version would stamp every response
    path = write_yaml(tmp_path, 'model_version: "1"\npolicy_version: p\nmodel_version: "2"\n')
    with pytest.raises(ConfigError, match=r"duplicate key 'model_version' at line 3"):
        load(config_path=path)


@pytest.mark.parametrize(("raw", "expected"), [
    ("2Gi", 2 * 1024**3), ("512Mi", 512 * 1024**2), ("1Ti", 1024**4), ("1TiB", 1024**4),
    ("1T", 1000**4), ("64Ki", 65536),
])
def test_sizes_take_kubernetes_units(raw: str, expected: int) -> None:
    # the chart's schema allows them next to volume sizes written so
    assert load(flags={"buffer_response_bytes": raw}).buffer_response_bytes == expected


@pytest.mark.parametrize("key", ["max_header_bytes", "max_request_line_bytes"])
def test_header_limits_are_bounded(key: str) -> None:
    # the HTTP parser takes them as a C unsigned long: every connection failed
    with pytest.raises(ConfigError, match="at most 1MiB"):
        load(flags={key: "18446744073709551615"})
    assert getattr(load(flags={key: "1MiB"}), key) == 1024**2


@pytest.mark.parametrize("raw", ["no such host:8080", "bad_host!:8080", "-x:1"])
def test_a_listen_host_must_be_an_address_or_a_host_name(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"host:port, such as 0\.0\.0\.0:8080"):
        load(flags={"listen": raw})


@pytest.mark.parametrize("raw", ["0.0.0.0:8080", "[::]:8080", "localhost:1", "pod-1.svc.local:9"])
def test_listen_hosts_that_are_fine(raw: str) -> None:
    assert load(flags={"listen": raw}).listen[1] == int(raw.rsplit(":", 1)[1])


@pytest.mark.parametrize("raw", ["health", "/he alth"])
def test_the_upstream_health_path_is_a_path(raw: str) -> None:
    # "health" made http://host:portHealth: readiness red for ever, check-config fine
    with pytest.raises(ConfigError, match="a path starting with /"):
        load(flags={"upstream_health_path": raw})
    assert load(flags={"upstream_health_path": "/v2/health/ready"}).upstream_health_path == \
        "/v2/health/ready"


def test_a_date_like_version_in_the_file_is_the_text_written(tmp_path: Path) -> None:
    # YAML reads 2024-01-01 as a date: "expected a non-empty string, got datetime.date(...)"
    path = write_yaml(tmp_path, "policy_version: 2024-01-01\nmodel_version: 2024-01-01T10:00:00Z"
                                "\nmodel_name: m\nevidence_bundle_id: e\n")
    settings = load(config_path=path, identity=False)
    assert settings.policy_version == "2024-01-01"
    assert settings.model_version == "2024-01-01T10:00:00Z"


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    # the duplicate-key check must let "<<" merge a mapping in
    path = write_yaml(tmp_path, "routes: [/a, /b]\n"
                                "privacy_profile_routes: {<<: {'/a': strict}, '/b': standard}\n")
    assert load(config_path=path).privacy_profile_routes == (("/a", "strict"), ("/b", "standard"))


def test_a_wal_max_bytes_too_small_for_the_default_segments_names_the_setting_set() -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={"wal_max_bytes": "1MiB"})
    assert str(info.value) == ("flag --wal-max-bytes: expected at least twice "
                               "wal_segment_bytes (8388608), got 1048576")


@pytest.mark.parametrize("written", ["off", "OFF", "'off'", "Off"])
def test_detectors_off_as_yaml_reads_it_is_off(tmp_path: Path, written: str) -> None:
    # The documented value, unquoted, is YAML's false.
    path = write_yaml(tmp_path, f"detectors: {written}\n")
    assert load(config_path=path).detectors == "off"


@pytest.mark.parametrize(("flags", "message"), [
    # passed check-config, then serve failed to bind the second listener
    ({"listen": "127.0.0.1:47180", "admin_listen": "127.0.0.1:47180"},
     "flag --admin-listen: expected an address other than listen's (127.0.0.1:47180)"),
    ({"listen": "127.0.0.1:9090"},
     "admin_listen (default): expected an address other than listen's (127.0.0.1:9090)"),
    ({"listen": "0.0.0.0:9191", "admin_listen": "127.0.0.1:9191"}, "expected an address other"),
    # every request came back to the sidecar: one POST wrote 358 events
    ({"listen": "127.0.0.1:47580", "upstream_url": "http://127.0.0.1:47580"},
     "flag --upstream-url: expected the model server's address, got the sidecar's own listen "
     "(127.0.0.1:47580)"),
    ({"listen": "0.0.0.0:8080", "upstream_url": "http://localhost:8080/v1"},
     "got the sidecar's own listen"),
    ({"upstream_url": "http://127.0.0.1:9090"}, "got the sidecar's own admin_listen"),
    ({"wal_dir": "/tmp/same", "events_file": "/tmp/same"},
     "flag --events-file: expected a file outside wal_dir (/tmp/same), got /tmp/same"),
    ({"wal_dir": "/tmp/wal", "events_file": "/tmp/wal/events.jsonl"}, "outside wal_dir"),
])
def test_settings_that_collide_are_refused_before_serving(
        flags: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags=flags)
    assert message in str(info.value)


def test_addresses_that_do_not_collide_are_accepted() -> None:
    settings = load(flags={"listen": "127.0.0.1:8080", "admin_listen": "127.0.0.1:9090",
                           "upstream_url": "http://10.0.0.7:8080", "wal_dir": "/tmp/wal",
                           "events_file": "/tmp/wal-events.jsonl"})
    assert settings.listen == ("127.0.0.1", 8080)
    # bound to one address, the sidecar is not on the loopback port the model uses
    assert load(flags={"listen": "10.0.0.5:8080", "upstream_url": "http://127.0.0.1:8080"})
    # the events file is not written (Kafka), or there is no log directory (memory)
    for other in ({"kafka_bootstrap": "kafka:9092"}, {"durability": "memory"}):
        assert load(flags={"wal_dir": "/tmp/wal", "events_file": "/tmp/wal/events.jsonl",
                           **other})


@pytest.mark.parametrize(("value", "message"), [
    # the README's own example named {name}; events carry {model}: it never applied
    ("/v2/models/{name}/infer=metadata-only",
     "got /v2/models/{name}/infer; did you mean /v2/models/{model}/infer?"),
    ("/v1/embeddings=metadata-only,/v1/embeddings=standard", "/v1/embeddings is given twice"),
])
def test_per_route_profiles_that_could_never_apply_are_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(flags={"privacy_profile_routes": value})
    assert str(info.value).startswith("flag --privacy-profile-routes: expected ")
    assert message in str(info.value)


def test_per_route_profiles_may_name_the_operator_s_own_routes() -> None:
    settings = load(flags={"routes": "/score/{id}",
                           "privacy_profile_routes": "/score/{id}=metadata-only"})
    assert settings.privacy_profile_routes == (("/score/{id}", "metadata-only"),)


def test_settings_that_would_be_silently_ignored_are_refused(
        tmp_path: Path, secrets: dict[str, str]) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"k" * 32)
    # a key file without a source: no client id would ever be made
    with pytest.raises(ConfigError, match=r"^client_id_source \(not set\): expected a source"):
        load(flags={"client_id_key_file": str(key)})
    # a header that can never arrive: no client id either
    with pytest.raises(ConfigError, match=r"client-id-source: expected header:<name> \(a valid"):
        load(flags={"client_id_source": "header:x client", "client_id_key_file": str(key)})
    # a client key without its certificate was never loaded
    with pytest.raises(ConfigError, match=r"^kafka_ssl_certfile \(not set\): expected the client"):
        load(flags={"kafka_bootstrap": "127.0.0.1:9", "kafka_security_protocol": "ssl",
                    "kafka_ssl_keyfile": str(key)})
