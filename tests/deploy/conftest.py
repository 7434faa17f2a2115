"""Fixtures for the deployment tests: the Helm chart rendered by real Helm (the Go SDK in
the ``helm-python-sdk`` wheel, no binary, no cluster) and the parsed Dockerfile.

``deploy_support.py`` is imported by name: pytest runs with ``--import-mode=importlib``,
so this folder goes on ``sys.path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
