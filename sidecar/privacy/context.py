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

Payload capture and masking (the profile's ``request``/``response``/``headers`` rules)
are not wired into the request path yet: events carry metadata only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.config import ConfigError, Settings
from sidecar.events.model import InferenceEvent
from sidecar.privacy.identity import ClientIdentity, IdentityError
from sidecar.privacy.profile import PrivacyProfile, ProfileError, ProfileSelector


def _record(profile: PrivacyProfile) -> dict[str, Any]:
    return {"profile": profile.name, "profile_digest": profile.digest,
            "retention_class": profile.retention_class}


def _keeps_addresses(profile: PrivacyProfile) -> bool:
    rule = profile.rule("IP_ADDRESS")
    return rule is None or rule.operator == "keep"


class PrivacyContext:
    def __init__(self, selector: ProfileSelector, identity: ClientIdentity | None) -> None:
        self.selector = selector
        self.identity = identity
        self._per_profile = {p.digest: (_record(p), _keeps_addresses(p))
                             for p in selector.profiles}

    def apply(self, event: InferenceEvent, headers: Mapping[str, str]) -> None:
        """Fill the event's privacy fields; before anything reads the event."""
        record, keeps_address = self._per_profile[self.selector.for_route(event.route).digest]
        event.privacy = record
        if self.identity is not None:
            event.client_id = self.identity.pseudonym(headers, event.client_address)
        if not keeps_address:
            event.client_address = None


def build_privacy(settings: Settings) -> PrivacyContext:
    """Load every profile the settings name and the identity key, or ``ConfigError``
    naming the setting, the file, the key in it and the reason."""
    try:
        selector = ProfileSelector(settings.privacy_profile,
                                   dict(settings.privacy_profile_routes))
    except ProfileError as exc:
        key = ("privacy_profile" if not settings.privacy_profile_routes
               else "privacy_profile or privacy_profile_routes")
        raise ConfigError(f"{key}: {exc}") from None
    identity = None
    if settings.client_id_source is not None:
        assert settings.client_id_key_file is not None  # the config cross-check saw to it
        try:
            identity = ClientIdentity(settings.client_id_source, settings.client_id_key_file)
        except IdentityError as exc:
            raise ConfigError(f"client_id_key_file: {exc}") from None
    return PrivacyContext(selector, identity)
