"""Builders the test files share: plain functions, no fixtures (those live in tests/conftest.py).

- ``wait``: wait on a condition with a deadline (never a fixed sleep), a stand-in process that lives until stopped
- ``tiny``: a tiny classification dataset imported into a workspace, fast run settings, a run's metric rows
- ``films``: unlabeled phantoms in the store, small box and landmark datasets on disk, a screenshot (not a film)
- ``models``: a phantom PNG, a tiny promoted classifier, the same without its out-of-distribution references
- ``pages``: AppTest drivers for the Predict and Train/Runs pages
- ``browser``: the system chromium's arguments, a `streamlit run` server on a free port, screenshots, marks
- ``bad_inputs``: a corpus of broken and hostile images and archives, each with the words its message must hold

Fixtures (tests/conftest.py): ``workspace`` (an empty $CERVICURVE_HOME), ``database`` (SQLite, then PostgreSQL),
``browser`` (playwright's chromium), ``model_home`` / ``with_model`` / ``judged_home`` / ``with_judging_model`` (a tiny
promoted classifier: training it makes a test slow).

A test file imports from here, never from another test file. A test that trains a model, starts a process that
trains, builds a demo or drives a browser is marked ``@pytest.mark.slow`` (``pytest -m "not slow"`` leaves it out), and
so is one that spends over ~2 s of CPU on its own (several ``python -m core``, streamlit or worker processes): the
fast lane stays under 3 minutes.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
