"""Team accounts and the database commands: roles checked in core, sessions that expire, audit, db copy/backup."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from core.data.accounts import SHELL, AccountError, Accounts, PermissionDenied

ROOT = Path(__file__).resolve().parents[1]


def test_single_user_mode_allows_everything_until_an_account_exists(database):
    with Accounts(database) as accounts:
        assert not accounts.team_mode()
        assert accounts.authorize(None, "start_run").name == "owner"
        accounts.add_user("ada", "correct horse", "admin")
        assert accounts.team_mode()
        with pytest.raises(PermissionDenied, match="sign in first"):
            accounts.authorize(None, "start_run")


def test_roles_are_checked_from_the_session_not_from_what_a_page_claims(database):
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        accounts.add_user("rev", "reviewer pw", "reviewer")
        annotator = accounts.sign_in("ann", "annotator pw")
        assert accounts.authorize(annotator, "label").name == "ann"
        for action in ("start_run", "promote", "delete_run", "import", "review"):
            with pytest.raises(PermissionDenied, match="ann.*annotator"):
                accounts.authorize(annotator, action)
        reviewer = accounts.sign_in("rev", "reviewer pw")
        assert accounts.authorize(reviewer, "review").role == "reviewer"
        with pytest.raises(PermissionDenied):
            accounts.authorize(reviewer, "promote")
        # a forged "session": a user name or a made-up token is no session
        for forged in ("ada", "admin", "x" * 43):
            with pytest.raises(PermissionDenied):
                accounts.authorize(forged, "start_run")
        admin = accounts.sign_in("ada", "correct horse")
        assert accounts.authorize(admin, "start_run", "run-1").name == "ada"
        assert accounts.authorize(SHELL, "promote").name == "shell"  # the CLI
        log = accounts.audit_log()
        assert (log[0]["user_name"], log[0]["action"], log[0]["allowed"]) == ("shell", "promote", True)
        refused = [(r["user_name"], r["action"]) for r in log if not r["allowed"]]
        assert ("ann", "start_run") in refused and ("rev", "promote") in refused


def test_wrong_passwords_unknown_users_and_disabled_accounts_get_no_session(database):
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        assert accounts.sign_in("ada", "wrong horse") is None
        assert accounts.sign_in("nobody", "correct horse") is None  # the same answer, after the same hash work
        token = accounts.sign_in("ada", "correct horse")
        assert accounts.user_for(token).name == "ada"
        accounts.sign_out(token)
        assert accounts.user_for(token) is None
        token = accounts.sign_in("ada", "correct horse")
        accounts.add_user("bob", "bob's password", "admin")
        accounts.disable("ada")
        assert accounts.user_for(token) is None and accounts.sign_in("ada", "correct horse") is None
        for bad, match in ((("", "password1", "admin"), "user name"), (("x y", "password1", "admin"), "user name"),
                           (("cy", "password1", "boss"), "role 'boss'"), (("cy", "short", "admin"), "8 characters"),
                           (("bob", "password1", "admin"), "exists already")):
            with pytest.raises(AccountError, match=match):
                accounts.add_user(*bad)


def test_an_idle_session_expires(database, monkeypatch):
    from datetime import timedelta

    from core.data import accounts as accounts_module

    monkeypatch.setenv("CERVICURVE_SESSION_IDLE_MIN", "0.01")  # 0.6 s
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        token = accounts.sign_in("ada", "correct horse")
        assert accounts.user_for(token) is not None
        now = accounts_module._now
        monkeypatch.setattr(accounts_module, "_now", lambda: now() + timedelta(seconds=1.0))  # 1 s idle, no waiting
        assert accounts.user_for(token) is None


def cli(workspace: Path, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=environment, input=stdin,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_users_commands_take_the_password_from_stdin_never_the_arguments(workspace):
    added = cli(workspace, "users", "add", "ada", "--role", "admin", stdin="correct horse\n")
    assert added.returncode == 0 and "sign-in is now on" in added.stdout
    assert cli(workspace, "users", "add", "ann", "--role", "annotator", stdin="annotator pw\n").returncode == 0
    assert cli(workspace, "users", "set-role", "ann", "reviewer").returncode == 0
    assert cli(workspace, "users", "disable", "ann").returncode == 0
    listing = cli(workspace, "users", "list").stdout
    assert "ada" in listing and "admin" in listing and "ann" in listing and "disabled" in listing
    refused = cli(workspace, "users", "add", "bo", "--role", "admin", stdin="short\n")
    assert refused.returncode == 2 and "8 characters" in refused.stderr and "Traceback" not in refused.stderr
    assert "manage_users" in cli(workspace, "users", "audit").stdout
    with Accounts() as accounts:
        assert accounts.sign_in("ada", "correct horse") is not None


@pytest.mark.slow
def test_db_copy_moves_every_row_to_postgresql_and_backup_copies_sqlite(workspace, postgres_url):
    import postgres_server
    from core.data.database import row_counts
    from core.data.store import AnnotationStore

    postgres_server.reset(postgres_url)
    with AnnotationStore() as store:
        ids = [store.add_image(f"{n}.png", sha256=f"{n:064x}", width=8, height=8, patient_id=f"P{n}", source="t",
                               dataset="d") for n in range(3)]
        for n, image_id in enumerate(ids):
            for who in ("ana", "ben"):
                store.save_label(image_id, annotator=who, curvature_class="normal", note=f"{who}{n}")
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
    sqlite_url = f"sqlite:///{workspace / 'cervicurve.db'}"

    copied = cli(workspace, "db", "copy", "--to", postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert row_counts(postgres_url)["labels"] == 6 == row_counts(sqlite_url)["labels"]
    with AnnotationStore(postgres_url) as server:
        notes = sorted(r.note for i in ids for r in server.history(i))
        assert notes == ["ana0", "ana1", "ana2", "ben0", "ben1", "ben2"]
        new = server.add_image("new.png", sha256=f"{99:064x}", width=8, height=8, patient_id="P9", source="t",
                               dataset="d")
        assert new > max(ids)  # ids continue after the copied ones
    with Accounts(postgres_url) as accounts:
        assert accounts.sign_in("ada", "correct horse") is not None
    again = cli(workspace, "db", "copy", "--to", postgres_url)
    assert again.returncode == 2 and "already holds rows" in again.stderr

    assert cli(workspace, "db", "upgrade").returncode == 0
    assert cli(workspace, "db", "upgrade", env={"CERVICURVE_DB": postgres_url}).returncode == 0
    backup = cli(workspace, "db", "backup")
    assert backup.returncode == 0
    path = Path(backup.stdout.strip().split(": ", 1)[1])
    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from labels").fetchone()[0] == 6
    refused = cli(workspace, "db", "backup", env={"CERVICURVE_DB": postgres_url})
    assert refused.returncode == 2 and "pg_dump" in refused.stderr
