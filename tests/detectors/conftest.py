"""Detector tests: scenarios.py is imported by name: pytest runs with
``--import-mode=importlib``, so this folder goes on ``sys.path``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))
