"""Builders the test files share: plain functions, no fixtures (those live in tests/conftest.py).

- ``wait``: wait on a condition with a deadline (never a fixed sleep), a stand-in process that lives until stopped
- ``tiny``: a tiny classification dataset imported into a workspace, fast run settings, a run's metric rows
- ``films``: unlabeled phantoms in the store, small box and landmark datasets on disk
- ``models``: a phantom PNG, a tiny promoted classifier, the same without its out-of-distribution references
- ``pages``: AppTest drivers for the Predict and Train/Runs pages
- ``browser``: the system chromium's arguments, a `streamlit run` server on a free port, screenshots

A test file imports from here, never from another test file.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
