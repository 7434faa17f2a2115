"""Payload capture end to end: request path → privacy stage (a real masking worker
process, presidio) → the events file. Every event is validated against the schema.

A sampled event carries its request and response reduced to the profile's JSON paths,
with detected entities masked; an unsampled one only its allow-listed headers; secrets
and raw personal data never reach the events file, whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.privacy.profile import load_profile

EMAIL = "jane.roe@example.org"
PHONE = "+1 415 555 0199"
SECRET = "sk-live-4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c"


def profile_file(tmp_path: Path, **changes: str) -> str:
    """The shipped ``strict`` profile with some top-level lines replaced."""
    text = Path(load_profile("strict").source).read_text()
    for key, value in changes.items():
        lines = [f"{key}: {value}" if line.startswith(f"{key}:") else line
                 for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    path = tmp_path / f"strict-{len(list(tmp_path.glob('strict-*')))}.yaml"
    path.write_text(text)
    return str(path)


async def chat(url: str, content: str, *, stream: bool = False, path: str =
               "/v1/chat/completions") -> tuple[int, bytes]:
    body = {"model": "demo", "messages": [{"role": "user", "content": content}],
            "stream": stream}
    headers = {"authorization": f"Bearer {SECRET}", "user-agent": "test-client/1.0",
               "cookie": "session=abc123"}
    async with aiohttp.ClientSession() as s, s.post(url + path, json=body,
                                                    headers=headers) as r:
        return r.status, await r.read()


def assert_no_secrets(sc: Any) -> None:
    raw = Path(sc.settings.events_file).read_bytes()
    for value in (EMAIL, PHONE, SECRET, "abc123", "415 555"):
        assert value.encode() not in raw, value


async def test_a_sampled_event_carries_its_payload_masked(
    make_sidecar: Any, tmp_path: Path
) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    status, _ = await chat(sc.url, f"I am Jane, mail {EMAIL} or call {PHONE}")
    assert status == 200
    (event,) = await sc.validated_events(1)
    privacy = event["privacy"]
    assert privacy["payload_captured"] is True and privacy["capture_reason"] == "sampled"
    assert privacy["failure"] is None
    assert privacy["entity_counts"].get("EMAIL_ADDRESS", 0) >= 1
    content = event["payload"]["request"]["messages"][0]["content"]
    assert "<EMAIL_ADDRESS>" in content and EMAIL not in content
    answer = event["payload"]["response"]["choices"][0]["message"]["content"]
    assert answer.startswith("You said:") and EMAIL not in answer
    assert event["headers"]["request"]["user-agent"] == "test-client/1.0"
    assert "authorization" not in event["headers"]["request"]
    assert "cookie" not in event["headers"]["request"]
    assert_no_secrets(sc)


async def test_an_unsampled_event_has_metadata_and_headers_only(
    make_sidecar: Any, tmp_path: Path
) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="0.0"))
    assert (await chat(sc.url, f"mail {EMAIL}"))[0] == 200
    (event,) = await sc.validated_events(1)
    assert event["privacy"]["payload_captured"] is False
    assert event["privacy"]["capture_reason"] == "not_sampled"
    assert event["payload"] is None
    assert event["headers"]["request"] == {"content-type": "application/json",
                                           "user-agent": "test-client/1.0"}
    assert_no_secrets(sc)


async def test_errors_are_always_captured(make_sidecar: Any, tmp_path: Path) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="0.0"))
    status, _ = await chat(sc.url, f"mail {EMAIL}", path="/error/503")
    assert status == 503
    (event,) = await sc.validated_events(1)
    assert event["privacy"]["payload_captured"] is True
    assert event["privacy"]["capture_reason"] == "always_capture:errors"
    assert "<EMAIL_ADDRESS>" in event["payload"]["request"]["messages"][0]["content"]
    assert_no_secrets(sc)


async def test_a_sampled_stream_is_relayed_untouched_and_recorded_assembled(
    make_sidecar: Any, tmp_path: Path, upstream: Any
) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    status, relayed = await chat(sc.url, "hi", stream=True)
    _, direct = await chat(upstream.url, "hi", stream=True)
    assert status == 200 and relayed == direct  # the stream's bytes are never altered
    (event,) = await sc.validated_events(1)
    assert event["stream"] is True and event["privacy"]["payload_captured"] is True
    merged = event["payload"]["response"]
    assert merged["choices"][0]["message"]["content"].startswith("token0 token1")


async def test_a_stream_that_broke_off_records_no_half_written_value(
    make_sidecar: Any, tmp_path: Path, upstream: Any
) -> None:
    # Half an address is what the recognizers cannot see as one: the tail of a stream
    # that ended early (upstream reset, timeout, client gone) is not recorded.
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    async with aiohttp.ClientSession() as s, s.get(sc.url + "/broken-stream") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    (event,) = await sc.validated_events(1)
    assert event["stream"] is True and event["outcome"] == "upstream_error"
    assert event["privacy"]["truncated"] is True, (event["privacy"], event.get("payload"))
    assert "jane.doe" not in str(event)


async def test_metadata_only_runs_no_masking_worker(make_sidecar: Any) -> None:
    sc = await make_sidecar(privacy_profile="metadata-only")
    assert sc.sidecar.pipeline.privacy is None
    assert (await chat(sc.url, f"mail {EMAIL}"))[0] == 200
    (event,) = await sc.validated_events(1)
    assert event["payload"] is None and event["headers"] is None
    assert event["privacy"]["capture_reason"] == "disabled"


async def test_a_dead_masking_worker_fails_closed_then_recovers(
    make_sidecar: Any, tmp_path: Path
) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    assert (await chat(sc.url, f"first {EMAIL}"))[0] == 200
    await sc.events(1)
    stage = sc.sidecar.pipeline.privacy
    assert stage is not None and stage._child.pid is not None
    os.kill(stage._child.pid, signal.SIGKILL)
    assert (await chat(sc.url, f"second {EMAIL}"))[0] == 200  # served regardless
    assert (await chat(sc.url, f"third {EMAIL}"))[0] == 200
    events = await sc.validated_events(3)
    second, third = events[1], events[2]
    assert second["privacy"]["failure"] == "worker_unavailable"
    assert second["payload"] is None and second["headers"] is None
    assert second["privacy"]["capture_reason"] == "sampled"
    assert third["privacy"]["failure"] is None and third["payload"] is not None
    assert sc.sidecar.metrics.privacy_failures.labels("worker_unavailable")._value.get() == 1
    assert_no_secrets(sc)


@pytest.mark.parametrize("rate", ["0.0", "1.0"])
async def test_every_inference_has_exactly_one_event_whatever_the_sampling(
    make_sidecar: Any, tmp_path: Path, rate: str
) -> None:
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile=profile_file(tmp_path, sample_rate=rate))
    for i in range(20):
        assert (await chat(sc.url, f"n{i} {EMAIL}"))[0] == 200
    events = await sc.validated_events(20)
    assert len({e["inference_id"] for e in events}) == 20
    assert all(e["privacy"]["payload_captured"] is (rate == "1.0") for e in events)


async def test_strict_under_concurrent_load_one_masked_event_per_request(
    make_sidecar: Any, tmp_path: Path
) -> None:
    # The default profile, 1,000 requests, 100 at a time: every response has its event,
    # each event went through the masking worker, none carries a raw secret.
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"),
                            privacy_profile="strict")
    semaphore = asyncio.Semaphore(100)
    ids: list[str] = []

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"req {i} from {EMAIL}"}]}
        async with semaphore, session.post(
            sc.url + "/v1/chat/completions", json=body,
            headers={"authorization": f"Bearer {SECRET}"},
        ) as r:
            await r.read()
            assert r.status == 200
            ids.append(r.headers["x-inference-id"])

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.wait_for(asyncio.gather(*(one(session, i) for i in range(1000))), 120)
    events = await sc.validated_events(1000)
    assert sorted(e["inference_id"] for e in events) == sorted(ids)
    assert all(e["privacy"]["failure"] is None for e in events)
    sampled = [e for e in events if e["privacy"]["payload_captured"]]
    assert 15 <= len(sampled) <= 90  # strict samples 5%: ~50 of 1,000
    assert all(e["headers"] is not None for e in events)
    assert_no_secrets(sc)


async def test_readiness_waits_for_the_masking_worker(make_sidecar: Any) -> None:
    sc = await make_sidecar(privacy_profile="strict")
    stage = sc.sidecar.pipeline.privacy
    reasons: list[str] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            async with s.get(sc.admin_url + "/readyz") as r:
                body = await r.json()
            if r.status == 200:
                break
            reasons.extend(body.get("reasons", []))
            await asyncio.sleep(0.05)
    assert r.status == 200, body
    assert stage.problem is None and stage._child.pid is not None  # ready = worker up
    assert all(not x.startswith("privacy:") or "masking worker starting" in x for x in reasons)


async def test_past_the_raw_body_budget_an_event_goes_without_payload_and_says_so(
    make_sidecar: Any, tmp_path: Path
) -> None:
    # The bodies events hold for the stages are bounded in bytes (raw_hold_bytes): large
    # bodies and a stage falling behind would otherwise hold gigabytes.
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"), raw_hold_bytes="2KiB",
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    status, _ = await chat(sc.url, "x" * 4000 + f" {EMAIL}")  # over the whole budget
    assert status == 200
    status, _ = await chat(sc.url, f"short, {EMAIL}")
    assert status == 200
    big, small = await sc.validated_events(2)
    assert big["privacy"]["failure"] == "raw_budget" and big["payload"] is None
    assert small["privacy"]["failure"] is None and small["payload"] is not None
    async with aiohttp.ClientSession() as session, \
            session.get(sc.admin_url + "/metrics") as response:
        assert "inference_sidecar_raw_bodies_skipped_total 1.0" in await response.text()
    assert sc.sidecar.handler._raw.used == 0  # every event gave its share back
    assert_no_secrets(sc)


async def test_a_sampled_stream_takes_its_copy_s_bound_from_the_raw_body_budget(
    make_sidecar: Any, tmp_path: Path
) -> None:
    # A stream's size is not known ahead: its copy's bound (max_captured_bytes, 16 KiB in
    # strict) is taken at once; with less budget than that, no copy is kept.
    sc = await make_sidecar(events_file=str(tmp_path / "events.jsonl"), raw_hold_bytes="8KiB",
                            privacy_profile=profile_file(tmp_path, sample_rate="1.0"))
    status, relayed = await chat(sc.url, f"hi {EMAIL}", stream=True)
    assert status == 200 and relayed.endswith(b"data: [DONE]\n\n")  # the stream is served
    (event,) = await sc.validated_events(1)
    assert event["stream"] is True
    assert event["privacy"]["failure"] == "raw_budget" and event["payload"] is None
    assert sc.sidecar.handler._raw.used == 0
    assert_no_secrets(sc)
