"""Fixtures for the privacy tests: shipped profiles, one analyzer per session, a key.

The analyzer takes ~0.1 s to build and is thread-safe once built, so one serves every
test (as one serves the whole sidecar). ``corpus.py`` and ``pii_values.py`` are imported
by name: pytest runs with ``--import-mode=importlib``, so this folder goes on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parent))

from sidecar.privacy.analyzer import Analyzer, build_analyzer
from sidecar.privacy.profile import PrivacyProfile, load_profile


@pytest.fixture(scope="session")
def strict() -> PrivacyProfile:
    return load_profile("strict")


@pytest.fixture(scope="session")
def standard() -> PrivacyProfile:
    return load_profile("standard")


@pytest.fixture(scope="session")
def analyzer(strict: PrivacyProfile, standard: PrivacyProfile) -> Analyzer:
    """One tuned analyzer for both shipped profiles that detect anything."""
    return build_analyzer([strict, standard])
