"""Shared fixtures: every test gets its own workspace folder, so nothing leaks into ./workspace."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Offline everywhere: a test that reaches for the network must fail, not hang.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $CERVICURVE_HOME with its own SQLite database."""
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    return home
