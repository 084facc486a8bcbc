"""Team mode in the app: a sign-in form, the same answer for a wrong name or password, the mode on show, and roles
enforced by core even when a page's session state is forged."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.data.accounts import Accounts, PermissionDenied
from core.data.store import AnnotationStore

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TOKEN = "_cervicurve_session_token"


@pytest.fixture()
def team(workspace):
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        yield accounts


def opened(page: str = "pages/data.py") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page(page).run()
    return at


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    at.button[0].click().run()
    return at


def test_single_user_mode_says_so_and_asks_for_nobody(workspace):
    at = opened()
    assert not at.exception
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "Single-user mode" in captions
    assert not any(t.key == "sign_in_name" for t in at.text_input)


@pytest.mark.slow
def test_sign_in_answers_a_wrong_name_and_a_wrong_password_alike(team):
    at = opened()
    assert not at.exception and [t.key for t in at.text_input] == ["sign_in_name", "sign_in_password"]
    assert not at.selectbox  # nothing of the page before sign-in
    wrong_password = [e.value for e in sign_in(at, "ada", "wrong horse").error]
    wrong_name = [e.value for e in sign_in(opened(), "nobody", "correct horse").error]
    assert wrong_password == wrong_name == ["Wrong user name or password."]
    at = sign_in(opened(), "ada", "correct horse")
    assert not at.exception
    assert "Team mode · signed in as **ada** (admin)" in " ".join(c.value for c in at.sidebar.caption)


def test_a_forged_session_state_grants_nothing(team):
    """An annotator who writes "admin" into the page's session state still cannot import: core checks the token."""
    at = sign_in(opened(), "ann", "annotator pw")
    assert not at.exception
    for key, value in (("role", "admin"), ("user", "ada"), ("annotator", "ada")):
        at.session_state[key] = value
    at.selectbox(key="import_layout").set_value("phantom").run()
    at.number_input(key="phantom_patients").set_value(2)
    at.number_input(key="phantom_size").set_value(96)
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any("import: user 'ann' is annotator; it needs admin" in e.value for e in at.error)
    with AnnotationStore() as store:
        assert store.count_images() == 0
    # and a made-up token is no session at all: the sign-in form again
    at.session_state[TOKEN] = "made-up"
    at.run()
    assert [t.key for t in at.text_input] == ["sign_in_name", "sign_in_password"]
    refused = [r for r in team.audit_log() if not r["allowed"]]
    assert refused and refused[0]["user_name"] == "ann" and refused[0]["action"] == "import"


def test_core_refuses_the_actions_of_a_role_that_lacks_them(team):
    from core.data import datasets, importers

    annotator = team.sign_in("ann", "annotator pw")
    with pytest.raises(PermissionDenied, match="needs admin"):
        importers.import_phantoms("p", actor=annotator, patients=1, size=96)
    with pytest.raises(PermissionDenied, match="needs admin"):
        datasets.make_splits("p", actor=annotator)
    with pytest.raises(PermissionDenied, match="sign in first"):
        importers.import_phantoms("p", actor=None, patients=1, size=96)
    admin = team.sign_in("ada", "correct horse")
    report = importers.import_phantoms("p", actor=admin, patients=3, size=96)
    assert report.imported == 3


def test_run_control_and_promotion_check_the_role_in_core(team, tmp_path):
    """Starting, cancelling, deleting and promoting runs: refused for an annotator's session, allowed for an admin's
    and for the shell (the CLI), with every attempt in the audit log."""
    from core.data.accounts import SHELL
    from core.runs import launch, layout, promotion, queue

    annotator = team.sign_in("ann", "annotator pw")
    config = {"task": "classify", "model": "cnn", "dataset": "none", "epochs": 1}
    for call in (lambda: launch.start_run(config, actor=annotator),
                 lambda: promotion.rollback("classify", actor=annotator)):
        with pytest.raises(PermissionDenied, match="needs admin"):
            call()
    run_dir = layout.new_run_dir("cnn")
    (run_dir / layout.CONFIG_FILE).write_text("task: classify\n")
    layout.write_status(run_dir, {"state": "failed", "message": "test"})
    for call in (lambda: launch.delete_run(run_dir, actor=annotator),
                 lambda: launch.cancel_run(run_dir, actor=annotator),
                 lambda: launch.resume_run(run_dir, actor=annotator),
                 lambda: promotion.promote(run_dir, actor=annotator),
                 lambda: queue.move(run_dir, 1, actor=annotator)):
        with pytest.raises(PermissionDenied):
            call()
    assert run_dir.exists()
    admin = team.sign_in("ada", "correct horse")
    assert launch.delete_run(run_dir, actor=admin) == run_dir and not run_dir.exists()
    refused = {r["action"] for r in team.audit_log() if not r["allowed"] and r["user_name"] == "ann"}
    assert refused == {"start_run", "promote", "delete_run", "cancel_run", "resume_run"}
    assert launch.cancel_run is not None and SHELL.may("promote")  # the CLI passes SHELL


def test_a_label_is_the_signed_in_users_whatever_name_the_page_sends(team):
    from core.data import labels

    team.add_user("rui", "reviewer pw", "reviewer")
    with AnnotationStore() as store:
        image_id = store.add_image("a.png", sha256="a" * 64, width=64, height=64, patient_id="P1", source="t",
                                   dataset="d")
    annotator, reviewer = team.sign_in("ann", "annotator pw"), team.sign_in("rui", "reviewer pw")
    label_id = labels.save(image_id, annotator="ada", curvature_class="normal", roi_box=[1, 1, 30, 30],
                           landmarks=None, actor=annotator)
    with AnnotationStore() as store:
        [reading] = store.readings(image_id=image_id)
    assert reading.annotator == "ann"  # not the forged "ada"
    with pytest.raises(PermissionDenied, match="needs reviewer"):
        labels.review(label_id, reviewer="ann", verdict="accept", actor=annotator)
    assert labels.review(label_id, reviewer="ann", verdict="accept", actor=reviewer) > 0
    with pytest.raises(PermissionDenied, match="sign in first"):
        labels.save(image_id, annotator="ann", curvature_class="normal", roi_box=None, landmarks=None, actor=None)
