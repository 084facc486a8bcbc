"""Team mode under attack (issue 20, part 5): each test is a probe that got through before and is refused now.

Sign-in back-off and lockout kept in the database, a cap on sign-ins hashed at once, no password left in session
state, an absolute session lifetime, no reviewing one's own reading, quiz answers in the signed-in user's name only,
role checks on ONNX export, run analysis, label exports and quizzes, an audit table the database keeps append-only,
and refused actions without a session in the audit too. Real SQLite files, the tests' PostgreSQL server, AppTest,
the CLI in a subprocess; the clock is injected, never waited on.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from streamlit.testing.v1 import AppTest

from core.data import accounts as accounts_module
from core.data.accounts import SHELL, Accounts, PermissionDenied
from core.data.store import AnnotationStore

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def no_delay(monkeypatch):
    """The fixed wait after a wrong password is not what these tests probe."""
    monkeypatch.setattr(accounts_module, "WRONG_PASSWORD_DELAY_S", 0.0)


@pytest.fixture()
def clock(monkeypatch):
    """The accounts' clock, moved by hand: ``clock.advance(seconds=31)``."""
    class Clock:
        def __init__(self):
            self.now = accounts_module._now()

        def __call__(self):
            return self.now

        def advance(self, **delta):
            self.now += timedelta(**delta)

    moved = Clock()
    monkeypatch.setattr(accounts_module, "_now", moved)
    return moved


def attempt(accounts: Accounts, name: str, password: str):
    """A token, None (wrong password) or the refusal raised (locked out, too many at once)."""
    try:
        return accounts.sign_in(name, password)
    except PermissionDenied as refusal:
        return refusal


def cli(workspace: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    environment = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    environment.pop("CERVICURVE_DB", None)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=environment, input=stdin,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------------------------- sign-in


def test_fifteen_wrong_passwords_lock_the_account_even_for_the_right_one(database):
    """Before: 15 wrong passwords, then the right one signed in."""
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        answers = [attempt(accounts, "ada", f"guess {n}") for n in range(15)]
        assert answers[:5] == [None] * 5  # five wrong passwords are answered as wrong
        assert all(isinstance(a, PermissionDenied) and "too many failed sign-ins" in str(a) for a in answers[5:])
        refused = attempt(accounts, "ada", "correct horse")
        assert not isinstance(refused, str), "the right password signed in straight after 15 wrong ones"
        assert "\n" not in str(refused)  # one line, saying when to try again
    # the count is in the database: a new engine (another process, a restart) sees the lock
    with Accounts(database) as restarted:
        assert not isinstance(attempt(restarted, "ada", "correct horse"), str)
        assert any(r["action"] == "sign_in" and not r["allowed"] and r["user_name"] == "ada"
                   for r in restarted.audit_log())


def test_the_lockout_doubles_with_each_failure_and_ends(database, clock):
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        for n in range(5):
            assert attempt(accounts, "ada", f"guess {n}") is None
        first = accounts.lockout("ada")
        assert first["failures"] == 5 and first["locked_until"] - clock.now == timedelta(seconds=30)
        clock.advance(seconds=31)
        assert attempt(accounts, "ada", "guess 6") is None  # allowed to try again, and wrong again
        assert accounts.lockout("ada")["locked_until"] - clock.now == timedelta(seconds=60)
        clock.advance(seconds=59)
        assert isinstance(attempt(accounts, "ada", "correct horse"), PermissionDenied)
        clock.advance(seconds=2)
        assert isinstance(attempt(accounts, "ada", "correct horse"), str)  # the lock ran out
        assert accounts.lockout("ada")["failures"] == 0  # and a success starts the count afresh


def test_an_unknown_name_is_locked_the_same_way(workspace):
    """A lockout must not tell which names are accounts: unknown ones lock after the same failures."""
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        for name in ("ada", "nobody"):
            answers = [attempt(accounts, name, "wrong horse") for _ in range(6)]
            assert answers[:5] == [None] * 5 and isinstance(answers[5], PermissionDenied)


def test_failures_in_another_process_lock_this_one_until_an_admin_unlocks(workspace):
    """The count is shared by every process on the database; ``users unlock`` (the real CLI) clears it."""
    assert cli(workspace, "users", "add", "ada", "--role", "admin", stdin="correct horse\n").returncode == 0
    script = ("from core.data import accounts as a\n"
              "a.WRONG_PASSWORD_DELAY_S = 0\n"
              "with a.Accounts() as acc:\n"
              "    print([acc.sign_in('ada', 'guess') for _ in range(5)])\n")
    environment = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    environment.pop("CERVICURVE_DB", None)
    other = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 0 and "[None, None, None, None, None]" in other.stdout, other.stderr
    with Accounts() as accounts:
        assert isinstance(attempt(accounts, "ada", "correct horse"), PermissionDenied)
    unlocked = cli(workspace, "users", "unlock", "ada")
    assert unlocked.returncode == 0, unlocked.stderr
    with Accounts() as accounts:
        assert isinstance(attempt(accounts, "ada", "correct horse"), str)
    assert "unlock ada" in cli(workspace, "users", "audit").stdout


def test_sign_ins_hashed_at_once_are_capped_and_one_more_is_refused(workspace, monkeypatch):
    """Each argon2 check holds 64 MiB: two slots taken, a third try is refused at once, not queued."""
    monkeypatch.setenv("CERVICURVE_SIGNIN_CONCURRENT", "2")
    monkeypatch.setattr(accounts_module, "_HASHING", None, raising=False)  # sized again from the setting
    monkeypatch.setattr(accounts_module, "SIGN_IN_WAIT_S", 0.0, raising=False)
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ben", "correct horse", "admin")
        real, inside, release = accounts_module._hasher(), threading.Semaphore(0), threading.Event()

        class HeldHasher:  # the real argon2 check, held open until the test lets it finish
            def verify(self, stored, password):
                inside.release()
                release.wait(60)
                return real.verify(stored, password)

        monkeypatch.setattr(accounts_module, "_hasher", HeldHasher)
        results: dict[str, object] = {}
        holders = [threading.Thread(target=lambda n=n: results.__setitem__(n, attempt(accounts, n, "correct horse")))
                   for n in ("ada", "ben")]
        for thread in holders:
            thread.start()
        assert inside.acquire(timeout=60) and inside.acquire(timeout=60)  # both are hashing now
        third = threading.Thread(target=lambda: results.__setitem__("third", attempt(accounts, "ada", "x")))
        third.start()
        third.join(10)  # refused at once when capped; before, it queued into a third 64 MiB hash
        finished = not third.is_alive()
        release.set()
        for thread in (*holders, third):
            thread.join(60)
        assert finished, "a third sign-in was hashed alongside the two"
        assert isinstance(results["third"], PermissionDenied) and "too many sign-ins at once" in str(results["third"])
        assert isinstance(results["ada"], str) and isinstance(results["ben"], str)


def test_the_password_is_not_kept_in_session_state(workspace, monkeypatch):
    """Before: ``st.session_state["sign_in_password"]`` held the typed password after the attempt."""
    monkeypatch.setenv("CERVICURVE_SIGNIN_FAILURES", "2")
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")

    def kept(at: AppTest):
        try:
            return at.session_state["sign_in_password"]
        except KeyError:
            return None

    def sign_in(at: AppTest, password: str) -> AppTest:
        at.text_input(key="sign_in_name").input("ada")
        at.text_input(key="sign_in_password").input(password)
        at.button[0].click().run()
        assert not at.exception
        return at

    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    sign_in(at, "wrong horse 1")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert kept(at) in (None, ""), "the wrong password stayed in session state"
    sign_in(at, "wrong horse 2")
    sign_in(at, "correct horse")  # locked after two failures: refused, with when to try again
    assert len(at.error) == 1 and at.error[0].value.startswith("Sign-in refused: too many failed sign-ins")
    assert kept(at) in (None, "")
    with Accounts() as accounts:
        accounts.unlock("ada")
    sign_in(at, "correct horse")
    assert "signed in as **ada**" in " ".join(c.value for c in at.sidebar.caption)
    assert kept(at) in (None, "")


def test_a_session_ends_after_its_lifetime_however_busy(database, clock, monkeypatch):
    """Before: a session used every few minutes lived for ever (only the idle limit ended one)."""
    monkeypatch.setenv("CERVICURVE_SESSION_IDLE_MIN", "120")
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        token = accounts.sign_in("ada", "correct horse")
        for _ in range(11):  # in use every hour
            clock.advance(hours=1)
            assert accounts.user_for(token) is not None
        clock.advance(hours=1, minutes=1)  # 12 h 1 min after sign-in, the default lifetime
        assert accounts.user_for(token) is None
        with pytest.raises(PermissionDenied, match="sign in first"):
            accounts.authorize(token, "start_run")
        monkeypatch.setenv("CERVICURVE_SESSION_MAX_HOURS", "0.5")
        fresh = accounts.sign_in("ada", "correct horse")
        clock.advance(minutes=31)
        assert accounts.user_for(fresh) is None


# ---------------------------------------------------------------------------------------------- who may do what


@pytest.fixture()
def team(workspace):
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        accounts.add_user("rui", "reviewer pw", "reviewer")
        accounts.add_user("rita", "reviewer pw", "reviewer")
        yield accounts


def _image(name: str = "a") -> int:
    from PIL import Image

    from core import settings

    Image.new("L", (64, 64), 128).save(settings.home() / f"{name}.png")
    with AnnotationStore() as store:
        return store.add_image(f"{name}.png", sha256=name * 64, width=64, height=64, patient_id="P1", source="t",
                               dataset="d")


def test_a_reviewer_cannot_accept_their_own_reading(team):
    """Before: rui labeled a film and accepted his own reading."""
    from core.data import labels

    rui, rita = team.sign_in("rui", "reviewer pw"), team.sign_in("rita", "reviewer pw")
    label_id = labels.save(_image(), annotator="rui", curvature_class="normal", roi_box=[1, 1, 30, 30],
                           landmarks=None, actor=rui)
    for verdict in ("accept", "fix"):
        with pytest.raises(PermissionDenied, match="own reading"):
            labels.review(label_id, reviewer="rita", verdict=verdict, curvature_class="reversed", actor=rui)
    with AnnotationStore() as store:
        assert store.reviews() == []
    refused = [r for r in team.audit_log() if not r["allowed"]]
    assert refused and (refused[0]["user_name"], refused[0]["action"]) == ("rui", "review")
    assert labels.review(label_id, reviewer="rui", verdict="accept", actor=rita) > 0  # another reviewer may
    with AnnotationStore() as store:
        assert [(r.reviewer, r.verdict) for r in store.reviews()] == [("rita", "accept")]


def test_the_labels_command_refuses_a_review_of_ones_own_reading(team, workspace):
    from core.data import labels

    label_id = labels.save(_image(), annotator="rui", curvature_class="normal", roi_box=None, landmarks=None,
                           actor=SHELL)
    own = cli(workspace, "labels", "review", str(label_id), "--reviewer", "rui", "--verdict", "accept")
    assert own.returncode == 2 and "own reading" in own.stderr and "Traceback" not in own.stderr
    assert len(own.stderr.strip().splitlines()) == 1
    other = cli(workspace, "labels", "review", str(label_id), "--reviewer", "rita", "--verdict", "accept")
    assert other.returncode == 0, other.stderr


def test_quiz_answers_are_the_signed_in_users_and_quizzes_are_set_by_reviewers(team):
    """Before: an annotator could answer in any student's name, and set quizzes."""
    from core.data import quizzes

    ann, rui = team.sign_in("ann", "annotator pw"), team.sign_in("rui", "reviewer pw")
    items = quizzes.phantom_items(2, seed=3)
    with quizzes.QuizStore() as store:
        with pytest.raises(PermissionDenied, match="needs reviewer"):
            store.create(title="Q", teacher="ann", source="phantom", seed=3, items=items, actor=ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            store.create(title="Q", teacher="rui", source="phantom", seed=3, items=items, actor=None)
        with pytest.raises(PermissionDenied, match="cannot act as 'Dr Who'"):
            store.create(title="Q", teacher="Dr Who", source="phantom", seed=3, items=items, actor=rui)
        quiz_id = store.create(title="Q", teacher=None, source="phantom", seed=3, items=items, actor=rui)
        assert store.quiz(quiz_id).teacher == "rui"  # the signed-in teacher
        answers = {item.position: item.truth_class for item in items}
        with pytest.raises(PermissionDenied, match="cannot act as 'rita'"):
            store.answer(quiz_id, "rita", answers, actor=ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            store.answer(quiz_id, "ann", answers, actor=None)
        store.answer(quiz_id, None, answers, actor=ann)
        store.answer(quiz_id, "ann", answers, actor=ann)
        assert [s.student for s in store.results(quiz_id).students] == ["ann"]
    refused = {(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]}
    assert {("ann", "create_quiz"), ("ann", "answer_quiz"), ("(no session)", "create_quiz"),
            ("(no session)", "answer_quiz")} <= refused


def test_onnx_export_run_analysis_and_label_exports_need_an_admin(team, tmp_path):
    """Before: an annotator's session could export the promoted model, analyse a run and export every label."""
    from core.data import labels
    from core.inference import onnx_export, run_analysis
    from core.runs import layout

    ann = team.sign_in("ann", "annotator pw")
    run_dir = layout.new_run_dir("det")
    (run_dir / layout.CONFIG_FILE).write_text("task: detect\n")
    _image()
    calls = {"export_model": lambda actor: onnx_export.export_promoted("classify", actor=actor),
             "analyse": lambda actor: run_analysis.analyse(run_dir, "test", actor=actor),
             "export": lambda actor: labels.export("csv", "d", tmp_path / "out", actor=actor)}
    for action, call in calls.items():
        with pytest.raises(PermissionDenied, match="needs admin"):
            call(ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            call(None)
    assert not (tmp_path / "out").exists() and not (run_dir / "test_analysis.json").exists()
    refused = {(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]}
    assert {(who, action) for who in ("ann", "(no session)") for action in calls} <= refused
    admin = team.sign_in("ada", "correct horse")
    assert labels.export("csv", "d", tmp_path / "out", actor=admin) is not None


# ---------------------------------------------------------------------------------------------- the audit


def test_the_audit_table_refuses_update_and_delete(database):
    """Before: ``UPDATE audit`` and ``DELETE FROM audit`` went through, so a trail could be rewritten."""
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.authorize(SHELL, "manage_users", "add ada")
        before = accounts.audit_log()
    engine = create_engine(database)
    statements = ["UPDATE audit SET allowed = false", "UPDATE audit SET user_name = 'nobody'", "DELETE FROM audit"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit")
    try:
        for statement in statements:
            with pytest.raises(DBAPIError, match="append-only"):
                with engine.begin() as conn:
                    conn.execute(text(statement))
    finally:
        engine.dispose()
    with Accounts(database) as accounts:
        assert accounts.audit_log() == before
        accounts.authorize(SHELL, "promote", "run-1")  # appending still works
        assert len(accounts.audit_log()) == len(before) + 1


def test_an_older_database_gets_the_trigger_when_opened(database):
    """A database made before the trigger (its audit table as it was) is upgraded in place by opening it."""
    engine = create_engine(database)
    try:
        accounts_module.metadata.create_all(engine)  # the tables only, as an older CerviCurve left them
        with engine.begin() as conn:
            conn.execute(accounts_module.audit.insert().values(at=accounts_module._now(), user_name="shell",
                                                               action="promote", target="old", allowed=True))
            conn.execute(text("DELETE FROM audit WHERE target = 'nothing'"))  # no trigger yet
        Accounts(database).close()
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM audit"))
    finally:
        engine.dispose()


def test_a_refused_admin_action_without_a_session_is_audited(team, workspace):
    """Before: an action tried with no session, or a made-up token, was refused but left no audit row."""
    from core.data import importers
    from core.runs import launch

    with pytest.raises(PermissionDenied, match="sign in first"):
        launch.start_run({"task": "classify", "model": "cnn", "dataset": "none", "epochs": 1}, actor=None)
    with pytest.raises(PermissionDenied, match="sign in first"):
        importers.import_phantoms("p", actor="made-up token", patients=1, size=96)
    refused = [(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]]
    assert ("(no session)", "start_run") in refused and ("(no session)", "import") in refused
    listing = cli(workspace, "users", "audit").stdout
    assert "(no session)" in listing and "REFUSED" in listing


def test_the_teach_page_in_team_mode_sets_and_answers_as_the_signed_in_user(team):
    """On the page: an annotator cannot set a quiz; a reviewer's quiz records the reviewer; the annotator answers as
    themself (no name to type) and a student name forged into session state is not used."""
    from core.data import quizzes

    def teach_as(name: str, password: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page("pages/teach.py").run()
        at.text_input(key="sign_in_name").input(name)
        at.text_input(key="sign_in_password").input(password)
        at.button[0].click().run()
        at.radio(key="teach_part").set_value("Self-test").run()
        assert not at.exception
        return at

    def create(at: AppTest) -> AppTest:
        at.radio(key="quiz_role").set_value("Set a quiz").run()
        assert not any(t.key == "quiz_teacher" for t in at.text_input)  # the teacher is the signed-in user
        at.number_input(key="quiz_films").set_value(2)
        next(b for b in at.button if b.label == "Create the quiz").click().run()
        assert not at.exception
        return at

    annotator = create(teach_as("ann", "annotator pw"))
    assert any("create_quiz: user 'ann' is annotator; it needs reviewer" in e.value for e in annotator.error)
    reviewer = create(teach_as("rui", "reviewer pw"))
    assert reviewer.success and "by rui" in reviewer.success[0].value

    at = teach_as("ann", "annotator pw")
    assert not any(t.key == "quiz_student" for t in at.text_input)
    made = quizzes.QuizStore().quiz(1)
    for item in made.items:
        at.session_state[f"quiz_1_answer_{item.position}"] = item.truth_class
    at.session_state["quiz_student"] = "rita"  # forged: there is no such field in team mode
    at.button(key="quiz_submit").click().run()
    assert not at.exception and not at.error
    assert any(m.value == "### Score: 2/2 (100%)" for m in at.markdown)
    with quizzes.QuizStore() as store:
        assert [s.student for s in store.results(1).students] == ["ann"]


def test_bad_team_settings_are_named_at_start(workspace, monkeypatch):
    from core import settings

    bad = {"CERVICURVE_SIGNIN_FAILURES": "0", "CERVICURVE_SIGNIN_LOCKOUT_S": "-1",
           "CERVICURVE_SIGNIN_CONCURRENT": "many", "CERVICURVE_SESSION_MAX_HOURS": "0"}
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as refused:
        settings.check()
    assert all(f"{name}={value!r}" in str(refused.value) for name, value in bad.items())
    for name in bad:
        monkeypatch.delenv(name)
    settings.check()
    assert (settings.sign_in_failures(), settings.sign_in_lockout_s(), settings.sign_in_concurrent(),
            settings.session_max_hours()) == (5, 30.0, 4, 12.0)
