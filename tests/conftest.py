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


@pytest.fixture(autouse=True)
def main_module():
    """Streamlit's script runner (AppTest) leaves its page as ``sys.modules["__main__"]``; a later test that spawns
    processes (the phantom writer's pool) would have each child run that page. Put pytest's back after each test."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """A fresh, empty $CERVICURVE_HOME with its own SQLite database."""
    home = tmp_path / "workspace"
    home.mkdir()
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    return home


@pytest.fixture(scope="module")
def browser():
    """Playwright's chromium, the system one (/usr/bin/chromium), one per test module. Mark the module with
    ``pytestmark = tests.helpers.browser.BROWSER_MARKS`` so it skips where chromium is missing."""
    from playwright.sync_api import sync_playwright

    from tests.helpers.browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def postgres_url():
    """One throwaway PostgreSQL server for the session (started in a temporary folder, gone afterwards)."""
    import postgres_server

    if postgres_server.binaries() is None:
        pytest.skip("PostgreSQL is not installed here (scripts/test.sh installs Debian's postgresql)")
    with postgres_server.running_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, workspace, monkeypatch):
    """The same test on both stores: the workspace's SQLite file, then a new, empty database of its own on the
    session's PostgreSQL server (``CERVICURVE_DB`` points at it; dropped afterwards). A test that holds only on
    SQLite files says so with ``@pytest.mark.parametrize("database", ["sqlite"], indirect=True)``."""
    if request.param == "sqlite":
        from core import settings

        yield settings.db_url()
        return
    import postgres_server

    url = postgres_server.create_database(request.getfixturevalue("postgres_url"))
    monkeypatch.setenv("CERVICURVE_DB", url)
    yield url
    postgres_server.drop_database(url)
    # Nothing went around CERVICURVE_DB to the workspace's SQLite file.
    assert not (workspace / "cervicurve.db").exists(), "a SQLite store was opened in a PostgreSQL test"


# ---------------------------------------------------------------------- a tiny promoted classifier (trains: slow)
@pytest.fixture(scope="module")
def model_home(tmp_path_factory) -> Path:
    """A workspace with a tiny classifier trained (one epoch, ~15 s) and promoted, once per test module."""
    from tests.helpers.models import promote_tiny_classifier

    home = tmp_path_factory.mktemp("model") / "workspace"
    promote_tiny_classifier(home)
    return home


@pytest.fixture()
def with_model(model_home, monkeypatch, request) -> Path:
    """$CERVICURVE_HOME is ``model_home`` for this test."""
    monkeypatch.setenv("CERVICURVE_HOME", str(model_home))
    if "database" not in request.fixturenames:  # else: its PostgreSQL database, or (sqlite) none set either
        monkeypatch.delenv("CERVICURVE_DB", raising=False)  # the home's own SQLite file
    return model_home


@pytest.fixture(scope="module")
def judged_home(model_home, tmp_path_factory) -> Path:
    """``model_home``'s classifier without its out-of-distribution references, so that its class is the verdict
    (tests.helpers.models.without_ood_references says why)."""
    from tests.helpers.models import without_ood_references

    return without_ood_references(model_home, tmp_path_factory.mktemp("judged") / "workspace")


@pytest.fixture()
def with_judging_model(judged_home, monkeypatch) -> Path:
    """$CERVICURVE_HOME is ``judged_home`` for this test."""
    monkeypatch.setenv("CERVICURVE_HOME", str(judged_home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    return judged_home
