"""``PrivacyContext``: what the request path applies of the privacy settings, per event.

Built once at start-up from the settings (every profile loaded and validated, the
identity key read), then called on the loop for each new event. It stays O(1) and cheap:

- ``client_id``: the pseudonymous client id (a keyed HMAC, ``identity.py``) when an
  identity source is configured; the raw identity never enters the event. It is also the
  Kafka key, so one client's events stay in order in one partition.
- ``privacy``: which profile governs the event (name, digest, retention class): one
  shared, never mutated dict per profile.
- ``client_address``: removed when the profile treats IP addresses as personal data
  (any operator other than ``keep`` for ``IP_ADDRESS``), as ``strict`` and ``standard`` do.

- ``capture``: under a profile that records anything (bodies, query, allow-listed
  headers), a ``Capture`` rides on the event (a slot orjson does not serialise) holding
  *references* to what the request path has anyway: the request's headers and body, the
  response's headers and body. Only a stream is copied, and only when the event is
  sampled (``decide`` is deterministic, so the request path and the privacy stage agree),
  within the profile's ``max_captured_bytes``. Masking happens in the pipeline's privacy
  stage, in a worker process: never on the request path.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from sidecar.config import ConfigError, Settings
from sidecar.events.model import InferenceEvent
from sidecar.privacy.identity import ClientIdentity, IdentityError, read_key
from sidecar.privacy.profile import PrivacyProfile, ProfileError, ProfileSelector, load_profile
from sidecar.privacy.sampling import Decision, decide
from sidecar.privacy.service import MaskingService
from sidecar.privacy.streams import StreamAssembler
from sidecar.workers.child import Child

Pairs = list[tuple[str, str]]


def _record(profile: PrivacyProfile, reason: str, failure: str | None = None) -> dict[str, Any]:
    """The event's ``privacy`` object before (or without) masking."""
    return {"profile": profile.name, "profile_digest": profile.digest,
            "retention_class": profile.retention_class, "payload_captured": False,
            "capture_reason": reason, "entity_counts": {}, "truncated": False,
            "omitted": {}, "failure": failure}


def records_anything(profile: PrivacyProfile) -> bool:
    """Whether events under ``profile`` need the masking stage at all."""
    return profile.captures_payload or bool(profile.headers_allow)


def decision(profile: PrivacyProfile, inference_id: str, status: int,
             flags: Collection[str] = ()) -> Decision:
    """``flags``: ``rejection`` (the sidecar refused the request), ``alert`` (a detector
    fired on it); see ``sampling.decide``."""
    return decide(inference_id, profile.sample_rate, status, flags,
                  rules=profile.always_capture, enabled=profile.captures_payload)


class Capture:
    """What one event may record, raw and in memory only, until the privacy stage masks it.

    Set on the loop by the request path; read by the privacy stage only after the event
    was committed (the request path no longer touches it then).
    """

    __slots__ = ("held", "over_budget", "profile", "query", "request_body", "request_headers",
                 "request_type", "response_body", "response_cut", "response_headers",
                 "response_omitted", "response_type", "stream")

    def __init__(self, profile: PrivacyProfile, request_headers: Pairs) -> None:
        self.profile = profile
        self.request_headers = request_headers
        self.request_body: bytes | None = None
        self.request_type: str | None = None
        self.query: str | None = None
        self.response_headers: Pairs | None = None
        self.response_body: bytes | None = None
        self.response_type: str | None = None
        self.response_omitted: str | None = None  # why a stream's payload cannot be kept
        self.response_cut = False  # a stream's copy ends before the stream did
        self.stream: StreamAssembler | None = None
        self.held: Any = None  # the event's share of the raw-body budget
        self.over_budget = False  # a body was not kept (sidecar/proxy/held.py)

    def request(self, body: bytes | None, content_type: str | None, query: str) -> None:
        self.request_body, self.request_type = body, content_type
        self.query = query or None

    def response(self, headers: Pairs, body: bytes | None) -> None:
        self.response_headers = headers
        self.response_type = next((v for k, v in headers if k.lower() == "content-type"), None)
        self.response_body = body

    def stream_if_sampled(self, inference_id: str, status: int) -> StreamAssembler | None:
        """A bounded copy of the stream, when this event keeps its payload: its bound is
        taken from the event's share of the raw-body budget at once (a stream's size is
        not known ahead), and an event over budget keeps none."""
        if decision(self.profile, inference_id, status).captured:
            limit = self.profile.max_captured_bytes
            if self.held is None or not self.held.grow(limit):
                self.over_budget = True
                return None
            self.stream = StreamAssembler(limit, self.response_type)
        return self.stream

    def finish_stream(self) -> None:
        if self.stream is not None:
            self.response_body, self.response_type, self.response_omitted = \
                self.stream.assembled()
            self.response_cut = self.stream.cut
            self.stream = None


def _keeps_addresses(profile: PrivacyProfile) -> bool:
    rule = profile.rule("IP_ADDRESS")
    return rule is None or rule.operator == "keep"


class PrivacyContext:
    def __init__(self, selector: ProfileSelector, identity: ClientIdentity | None,
                 hash_key: bytes) -> None:
        self.selector = selector
        self.identity = identity
        self.hash_key = hash_key  # for the masking worker's keyed-hash operator
        self.masking = any(records_anything(p) for p in selector.profiles)
        self._per_profile = {
            p.digest: (p, _record(p, "disabled" if not p.captures_payload else "failed",
                                  None if not records_anything(p) else "not_masked"),
                       _keeps_addresses(p), records_anything(p))
            for p in selector.profiles}

    def apply(self, event: InferenceEvent, headers: Mapping[str, str]) -> None:
        """Fill the event's privacy fields; before anything reads the event."""
        profile, record, keeps_address, captures = self._per_profile[
            self.selector.for_route(event.route).digest]
        # Replaced by the masking stage; what stays if masking never happens (fail closed).
        event.privacy = record
        if self.identity is not None:
            event.client_id = self.identity.pseudonym(headers, event.client_address)
        if not keeps_address:
            event.client_address = None
        if captures:
            event.capture = Capture(profile, list(headers.items()))


def build_privacy(settings: Settings) -> PrivacyContext:
    """Load every profile the settings name and the identity key, or ``ConfigError``
    naming the setting, the file, the key in it and the reason."""
    try:
        default = load_profile(settings.privacy_profile)
    except ProfileError as exc:
        raise ConfigError(f"privacy_profile: {exc}") from None
    try:  # the per-route ones: an error names the setting, and so where it came from
        selector = ProfileSelector(default, dict(settings.privacy_profile_routes))
    except ProfileError as exc:
        raise ConfigError(f"privacy_profile_routes: {exc}") from None
    identity = None
    if settings.client_id_source is not None:
        assert settings.client_id_key_file is not None  # the config cross-check saw to it
        try:
            identity = ClientIdentity(settings.client_id_source, settings.client_id_key_file)
        except IdentityError as exc:
            raise ConfigError(f"client_id_key_file: {exc}") from None
        source = settings.client_id_source
        header = source[len("header:"):].strip().lower() if source.startswith("header:") else ""
        for profile in selector.profiles:
            if header and header in profile.headers_allow:
                key = ("privacy_profile" if profile.digest == selector.default.digest
                       else "privacy_profile_routes")
                raise ConfigError(
                    f"{key}: profile {profile.name!r} records the {header} header, "
                    f"which client_id_source pseudonymises: the raw identity would be "
                    f"recorded next to its pseudonym; remove it from headers.allow")
    return PrivacyContext(selector, identity, _hash_key(settings))


def _hash_key(settings: Settings) -> bytes:
    """The key of the ``hash`` operator: from ``privacy_hash_key_file``, else random for
    this process (hashes then join within one run only)."""
    path = settings.privacy_hash_key_file
    if path is None:
        return os.urandom(32)
    try:
        return read_key(Path(path))
    except IdentityError as exc:
        raise ConfigError(f"privacy_hash_key_file: {exc}") from None


def masking_worker(privacy: PrivacyContext, log_level: str) -> Child | None:
    """The masking stage's worker process, when some profile in use records anything."""
    if not privacy.masking:
        return None
    profiles = privacy.selector.profiles
    return Child("privacy", functools.partial(MaskingService, profiles, privacy.hash_key),
                 log_level)
