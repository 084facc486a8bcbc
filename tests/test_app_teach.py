"""Teach page through AppTest: Explore redraws on a slider move, four canvas points are measured, a quiz is set,
answered through session state and scored, with and without a (tiny, really trained) promoted classifier."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.inference import teaching
from core.settings import CLASSES
from test_app_predict import promote_tiny_classifier

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture(scope="module")
def model_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("teach") / "workspace"
    promote_tiny_classifier(home)
    return home


@pytest.fixture()
def with_model(model_home, monkeypatch, request) -> Path:
    monkeypatch.setenv("CERVICURVE_HOME", str(model_home))
    if "database" not in request.fixturenames:  # else: its PostgreSQL database, or (sqlite) none set either
        monkeypatch.delenv("CERVICURVE_DB", raising=False)  # the home's own SQLite file
    return model_home


def teach_page(part: str = "Explore") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/teach.py").run()
    if part != "Explore":
        at.radio(key="teach_part").set_value(part).run()
    assert not at.exception and not at.error
    return at


def measured(at: AppTest) -> dict[str, str]:
    table = at.dataframe[0].value
    return dict(zip(table["measurement"], table["value"]))


def rule_class(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("#### Rule class")).split("**")[1]


def test_a_slider_move_redraws_and_moves_the_measured_angle_as_much(workspace):
    at = teach_page()
    assert any("Research and teaching use only" in w.value for w in at.warning)
    before = float(measured(at)["Cobb C2–C7 (four-line)"].rstrip("°"))
    assert before == pytest.approx(20.0, abs=0.05) and rule_class(at) == "normal"
    picture = at.get("image")[0].proto.imgs[0].url
    at.slider(key="explore_angle").set_value(7).run()
    assert not at.exception and not at.error
    after = float(measured(at)["Cobb C2–C7 (four-line)"].rstrip("°"))
    assert after - before == pytest.approx(7 - 20, abs=0.05)
    assert rule_class(at) == "straightened"
    assert at.get("image")[0].proto.imgs[0].url != picture  # a new film was drawn
    at.slider(key="explore_angle").set_value(-4).run()
    assert rule_class(at) == "reversed"
    # The settings outlive a visit to another part (Measure uses the same phantom).
    at.radio(key="teach_part").set_value("Self-test").run()
    at.radio(key="teach_part").set_value("Explore").run()
    assert at.slider(key="explore_angle").value == -4 and rule_class(at) == "reversed"
    # No model is promoted: the page says so and shows the rest.
    assert any(i.value.startswith("No model is promoted") for i in at.info)
    assert any(c.value.startswith("Redrawn at -4.0° in ") for c in at.caption)
    assert set(measured(at)) >= {"Ishihara index (CCI)", "a1: C3 corner to the chord", "a4: C6 corner to the chord",
                                 "Arc depth", "Rule class"}


def test_the_models_answer_sits_beside_the_rule(with_model):
    at = teach_page()
    verdict = next(m.value for m in at.markdown if m.value.startswith("Model class:"))
    model_class = verdict.split("**")[1]
    assert model_class in CLASSES
    expected = "agrees" if model_class == "normal" else "disagrees"
    assert f"**{expected}** with the rule's **normal**" in verdict
    assert len(at.get("plotly_chart")) == 1  # the rule scale
    bars = at.get("progress")  # the probabilities, the model's class in bold
    assert [bar.proto.text.split(":")[0].strip("*") for bar in bars] == list(CLASSES)
    assert [bar.proto.text.startswith("**") for bar in bars] == [c == model_class for c in CLASSES]
    captions = [image.proto.imgs[0].caption for image in at.get("image")]
    assert any(c.startswith("Grad-CAM for") for c in captions)
    assert any("no angle of their own" in c.value for c in at.caption)  # no landmark model promoted


def canvas_key(at: AppTest, film: teaching.Film) -> str:
    digest = hashlib.sha1(repr(film.key).encode()).hexdigest()[:10]
    return f"measure_canvas_{digest}_{at.session_state['measure_resets']}"


def place(at: AppTest, film: teaching.Film, points) -> AppTest:
    """Points as the canvas's point tool sends them (film pixels -> canvas pixels)."""
    scale = 440 / film.pixels.shape[1]
    radius, stroke = 4, 1
    objects = [{"type": "circle", "left": x * scale - (radius + stroke / 2), "top": y * scale, "radius": radius,
                "strokeWidth": stroke, "originX": "left", "originY": "center"} for x, y in points]
    at.session_state[canvas_key(at, film)] = {"drawing": {"raw": {"objects": objects}, "data": None},
                                              "backgroundFit": None}
    at.run()
    assert not at.exception and not at.error
    return at


def test_four_points_give_an_angle_against_the_truth(workspace):
    at = teach_page("Measure it yourself")
    film = teaching.phantom_film(teaching.FilmSettings())
    corners = teaching.truth_endplates(film.landmarks)
    place(at, film, corners[:3])
    assert [i.value for i in at.info] == ["3 of 4 points placed."]
    # The true corners, the C7 ones a little off: the student's angle differs from the truth by that tilt.
    off = corners.copy()
    off[3, 1] += 6.0
    place(at, film, off)
    metrics = {m.label: m.value for m in at.metric}
    expected = teaching.endplate_cobb(off, film.facing)
    assert metrics["Your angle"] == f"{expected:+.1f}°" and metrics["True angle"] == f"{film.truth.cobb_c2c7:+.1f}°"
    assert abs(expected - film.truth.cobb_c2c7) > 1.0
    assert metrics["Model's angle"] == "—"
    assert at.get("image")[-1].proto.imgs[0].caption.startswith("Orange: your endplates")
    at.button(key="measure_clear").click().run()
    assert [i.value for i in at.info] == ["0 of 4 points placed."]


def create_button(at: AppTest):
    return next(button for button in at.button if button.label == "Create the quiz")  # the form's submit button


@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_a_quiz_set_answered_and_scored(with_model):
    at = teach_page("Self-test")
    assert any(i.value.startswith("No quiz yet") for i in at.info)
    at.radio(key="quiz_role").set_value("Set a quiz").run()
    at.text_input(key="quiz_title").input("Week 1")
    at.text_input(key="quiz_teacher").input("Dr Ortiz")
    at.number_input(key="quiz_films").set_value(5)
    at.number_input(key="quiz_seed").set_value(3)
    create_button(at).click().run()
    assert not at.exception and not at.error
    assert at.success[0].value.startswith("Created #1 Week 1 (5 films, phantoms, by Dr Ortiz)")
    made = teaching.quiz(1)
    assert all(item.model_class in CLASSES for item in made.items)  # the model's answer, frozen at creation

    at.radio(key="quiz_role").set_value("Take a quiz").run()
    assert len(at.get("image")) == 5
    wrong = {2, 4}
    for item in made.items:
        answer = CLASSES[(CLASSES.index(item.truth_class) + (item.position in wrong)) % 3]
        at.session_state[f"quiz_1_answer_{item.position}"] = answer
    at.button(key="quiz_submit").click().run()
    assert [e.value for e in at.error] == ["Submitting failed: enter a name"]
    at.text_input(key="quiz_student").input("Ana")
    at.button(key="quiz_submit").click().run()
    assert not at.exception and not at.error
    assert any(m.value == "### Score: 3/5 (60%)" for m in at.markdown)
    confusion = at.dataframe[0].value
    assert int(confusion.to_numpy().trace()) == 3 and int(confusion.to_numpy().sum()) == 5
    missed = [image.proto.imgs[0].caption for image in at.get("image")[5:]]
    assert [re.match(r"Film (\d)", c).group(1) for c in missed] == ["2", "4"]
    assert all("truth" in c and "model: " in c for c in missed)

    at.radio(key="quiz_role").set_value("Class results").run()
    students = at.dataframe[0].value
    assert students[["student", "correct", "films"]].values.tolist() == [["Ana", 3, 5]]
    films = at.dataframe[1].value
    assert films["correct"].tolist() == [1, 0, 1, 0, 1]
    assert [b.label for b in at.get("download_button")] == ["Download all answers (CSV)"]


@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_a_bad_quiz_request_is_a_message(workspace):
    at = teach_page("Self-test")
    at.radio(key="quiz_role").set_value("Set a quiz").run()
    at.text_input(key="quiz_teacher").input("T")
    at.radio(key="quiz_source").set_value("A labeled dataset")
    create_button(at).click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["There is no dataset to draw films from: import one on the Data page, "
                                           "or use phantoms."]
