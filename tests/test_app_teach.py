"""Teach page through AppTest: Explore redraws on a slider move, four canvas points are measured, a quiz is set,
answered through session state and scored, with and without a (tiny, really trained) promoted classifier. The models'
answer is Predict's verdict (a film they do not judge gets no class and no heatmap); a student sees only their own
quiz answers, the quiz's teacher everyone's; nothing a student sees names an environment variable."""
from __future__ import annotations

import hashlib
import re

import pytest
from streamlit.testing.v1 import AppTest

from core.inference.teaching import explore, films, geometry, quiz
from core.settings import CLASSES
from tests.helpers.pages import APP


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
    # Each construction is a checkbox of its own (five pills did not fit the column): unticking one redraws
    assert [c.label for c in at.checkbox if c.key.startswith("explore_layer_")] == [
        "23 landmarks", "Cobb four-line", "Ishihara chord and a1–a4", "arc depth", "model's landmarks"]
    drawn = at.get("image")[0].proto.imgs[0].url
    at.checkbox(key="explore_layer_landmarks").uncheck().run()
    assert not at.exception and at.get("image")[0].proto.imgs[0].url != drawn


def image_captions(at: AppTest) -> list[str]:
    return [image.proto.imgs[0].caption for image in at.get("image")]


def models_answer(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Model's answer:"))


@pytest.mark.slow
def test_a_film_the_models_do_not_judge_gets_no_class_and_no_heatmap(with_model):
    """The tiny model finds the Explore phantom unlike its training films: Predict gives no class for such a film, and
    neither does Teach — no class, no probabilities as an answer, no heatmap, and the reason."""
    at = teach_page()
    film = films.phantom_film(films.FilmSettings())
    predictor, _ = explore.predictor_for()
    verdict = explore.model_answer(film, predictor).verdict
    assert not verdict.judged  # the premise: Predict would not judge this film either
    assert models_answer(at) == ("Model's answer: **not judged — check this film by eye**. No class to set beside "
                                 "the rule's **normal**.")
    assert any("unlike the films the models were trained on" in w.value for w in at.warning)
    assert not at.get("progress")  # no probability bars
    assert not any(c.startswith("Grad-CAM") for c in image_captions(at))
    assert any(i.value.startswith("No heatmap: the network's class is not the models' answer") for i in at.info)
    assert not any(cls in models_answer(at) for cls in ("straightened", "reversed"))
    assert any("no angle of their own" in c.value for c in at.caption)  # no landmark model promoted


@pytest.mark.slow
def test_a_judged_film_shows_its_class_beside_the_rule_with_its_heatmap(with_judging_model):
    at = teach_page()
    answer = models_answer(at)
    model_class = answer.split("**")[1].split(" (")[0]
    assert model_class in CLASSES
    expected = "agrees" if model_class == "normal" else "disagrees"
    assert re.fullmatch(rf"Model's answer: \*\*{model_class} \(\d+%(, low confidence)?\)\*\*\. It \*\*{expected}\*\* "
                        r"with the rule's \*\*normal\*\*\.", answer), answer
    assert len(at.get("plotly_chart")) == 1  # the rule scale
    bars = at.get("progress")  # the probabilities, the model's class in bold
    assert [bar.proto.text.split(":")[0].strip("*") for bar in bars] == list(CLASSES)
    assert [bar.proto.text.startswith("**") for bar in bars] == [c == model_class for c in CLASSES]
    assert f"Grad-CAM heatmap for '{model_class}'" in image_captions(at)
    assert any("no angle of their own" in c.value for c in at.caption)  # no landmark model promoted


def page_text(at: AppTest) -> str:
    """Every element's message, labels, help and data as the browser receives them (main area and sidebar)."""
    texts = []

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None:
            texts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    return "\n".join(texts)


@pytest.mark.slow
def test_nothing_a_student_sees_names_an_environment_variable(with_model, tmp_path, monkeypatch):
    """Every part of the page a student opens, with a model and a quiz: no CERVICURVE_ setting names (the rule's
    caption named its two thresholds' variables)."""
    monkeypatch.setenv("CERVICURVE_DB", f"sqlite:///{tmp_path}/own.db")  # its quiz stays out of the shared home
    made = quiz.create_quiz(title="Names", teacher="T", films=2, seed=1)
    at = teach_page()
    seen = [page_text(at)]
    assert "Rule on Cobb C2–C7" in seen[0]
    at.radio(key="teach_part").set_value("Measure it yourself").run()
    film = films.phantom_film(films.FilmSettings())
    place(at, film, geometry.truth_endplates(film.landmarks))
    seen.append(page_text(at))
    assert "Your angle" in seen[-1]
    at.radio(key="teach_part").set_value("Self-test").run()
    at.text_input(key="quiz_student").input("Zofia")
    for item in made.items:
        at.session_state[f"quiz_{made.quiz_id}_answer_{item.position}"] = item.truth_class
    at.button(key="quiz_submit").click().run()
    assert not at.exception and not at.error
    seen.append(page_text(at))
    assert "Score: 2/2" in seen[-1]
    at.radio(key="quiz_role").set_value("Class results").run()
    seen.append(page_text(at))
    assert not at.exception and not at.error
    for part, text in zip(("Explore", "Measure", "Take a quiz", "Class results"), seen):
        assert "CERVICURVE_" not in text, part


def canvas_key(at: AppTest, film: films.Film) -> str:
    digest = hashlib.sha1(repr(film.key).encode()).hexdigest()[:10]
    return f"measure_canvas_{digest}_{at.session_state['measure_resets']}"


def place(at: AppTest, film: films.Film, points) -> AppTest:
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
    film = films.phantom_film(films.FilmSettings())
    corners = geometry.truth_endplates(film.landmarks)
    place(at, film, corners[:3])
    assert [i.value for i in at.info] == ["3 of 4 points placed."]
    # The true corners, the C7 ones a little off: the student's angle differs from the truth by that tilt.
    off = corners.copy()
    off[3, 1] += 6.0
    place(at, film, off)
    metrics = {m.label: m.value for m in at.metric}
    expected = geometry.endplate_cobb(off, film.facing)
    assert metrics["Your angle"] == f"{expected:+.1f}°" and metrics["True angle"] == f"{film.truth.cobb_c2c7:+.1f}°"
    assert abs(expected - film.truth.cobb_c2c7) > 1.0
    assert metrics["Model's angle"] == "—"
    assert at.get("image")[-1].proto.imgs[0].caption.startswith("Orange: your endplates")
    at.button(key="measure_clear").click().run()
    assert [i.value for i in at.info] == ["0 of 4 points placed."]


def create_button(at: AppTest):
    return next(button for button in at.button if button.label == "Create the quiz")  # the form's submit button


@pytest.mark.slow
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
    key = teacher_key(at)
    made = quiz.quiz(1)
    # The models' answer, frozen at creation, is their verdict: the tiny model judges none of these phantoms.
    assert all(item.model_name and item.model_class is None for item in made.items)
    assert {quiz.model_said(item) for item in made.items} == {"not judged"}

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
    assert all("truth" in c and c.endswith("; model: not judged") for c in missed)

    at.radio(key="quiz_role").set_value("Class results").run()
    assert not at.get("download_button")  # without the teacher key: this session's own answers only
    assert any(m.value == "### Score: 3/5 (60%)" for m in at.markdown)
    at.text_input(key="results_key").input(key.lower().replace("-", " ")).run()  # typed loosely, still the key
    assert not at.exception and not at.error
    students = at.dataframe[0].value
    assert students[["student", "correct", "films"]].values.tolist() == [["Ana", 3, 5]]
    films = at.dataframe[1].value
    assert films["correct"].tolist() == [1, 0, 1, 0, 1]
    assert films["model"].tolist() == ["not judged"] * 5
    assert [b.label for b in at.get("download_button")] == ["Download all answers (CSV)"]


def teacher_key(at: AppTest) -> str:
    """The teacher key the page shows once, when the quiz is set (single-user mode)."""
    shown = next(i.value for i in at.info if i.value.startswith("Teacher key of this quiz"))
    return re.search(r"\*\*([A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4})\*\*", shown).group(1)


def answer_as(at: AppTest, name: str, quiz) -> AppTest:
    """Answer every film right as ``name`` on the Take a quiz view."""
    at.radio(key="quiz_role").set_value("Take a quiz").run()
    at.text_input(key="quiz_student").input(name)
    for item in quiz.items:
        at.session_state[f"quiz_{quiz.quiz_id}_answer_{item.position}"] = item.truth_class
    at.button(key="quiz_submit").click().run()
    assert not at.exception and not at.error
    return at


@pytest.mark.slow
def test_in_single_user_mode_a_student_sees_their_own_answers_and_only_the_teacher_sees_the_class(workspace):
    """Single-user mode: no sign-in, so a name proves nothing. Before: any student opened Class results and read
    every classmate's answers. Now a student sees the answers their own session submitted; the class's, only with the
    quiz's teacher key (shown once, to whoever set the quiz)."""
    teacher = teach_page("Self-test")
    teacher.radio(key="quiz_role").set_value("Set a quiz").run()
    teacher.text_input(key="quiz_teacher").input("Dr Ortiz")
    teacher.number_input(key="quiz_films").set_value(3)
    create_button(teacher).click().run()
    key = teacher_key(teacher)
    made = quiz.quiz(1)

    answer_as(teach_page("Self-test"), "Zofia", made)
    bruno = answer_as(teach_page("Self-test"), "Bruno", made)
    bruno.radio(key="quiz_role").set_value("Class results").run()
    assert not bruno.exception and not bruno.error
    text = page_text(bruno)
    assert "Bruno" in text and "Zofia" not in text  # their own, and no classmate's, anywhere on the page
    assert not bruno.get("download_button")
    assert any("The class's answers are for the quiz's teacher" in c.value for c in bruno.caption)
    # a classmate's name typed as the student changes nothing: the view never looks answers up by name
    bruno.session_state["quiz_student"] = "Zofia"
    bruno.run()
    assert "Zofia" not in page_text(bruno)
    bruno.text_input(key="results_key").input("ABCD-EFGH-JKMN").run()
    assert [e.value for e in bruno.error] == ["Reading the results failed: that is not the teacher key of quiz 1"]
    assert "Zofia" not in page_text(bruno)

    teacher.radio(key="quiz_role").set_value("Class results").run()
    assert not teacher.get("dataframe")  # the teacher too needs the key: the page cannot tell who sits at it
    teacher.text_input(key="results_key").input(key).run()
    assert not teacher.exception and not teacher.error
    assert sorted(teacher.dataframe[0].value["student"]) == ["Bruno", "Zofia"]
    assert [b.label for b in teacher.get("download_button")] == ["Download all answers (CSV)"]


@pytest.mark.slow
def test_in_team_mode_class_results_are_for_reviewers_and_a_student_sees_their_own(workspace):
    from core.data.accounts import Accounts

    with Accounts() as accounts:
        accounts.add_user("rui", "reviewer pw", "reviewer")
        accounts.add_user("ann", "annotator pw", "annotator")
        accounts.add_user("bob", "annotator pw", "annotator")
        rui = accounts.sign_in("rui", "reviewer pw")
    made = quiz.create_quiz(title="Team quiz", teacher=None, films=2, seed=4, actor=rui)
    assert made.teacher_key is None  # team mode: the role decides, there is no key

    def teach_as(name: str, password: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page("pages/teach.py").run()
        at.text_input(key="sign_in_name").input(name)
        at.text_input(key="sign_in_password").input(password)
        at.button[0].click().run()
        at.radio(key="teach_part").set_value("Self-test").run()
        assert not at.exception and not at.error
        return at

    for name in ("ann", "bob"):
        at = teach_as(name, "annotator pw")
        for item in made.items:
            at.session_state[f"quiz_{made.quiz_id}_answer_{item.position}"] = item.truth_class
        at.button(key="quiz_submit").click().run()
        assert not at.exception and not at.error
    ann = teach_as("ann", "annotator pw")  # a new session: nothing of the submission kept in it
    ann.radio(key="quiz_role").set_value("Class results").run()
    assert not ann.exception and not ann.error
    assert not any(t.key == "results_key" for t in ann.text_input)
    assert any(m.value == "### Score: 2/2 (100%)" for m in ann.markdown)  # her own, read back by her account
    assert "bob" not in page_text(ann) and not ann.get("download_button")
    reviewer = teach_as("rui", "reviewer pw")
    reviewer.radio(key="quiz_role").set_value("Class results").run()
    assert sorted(reviewer.dataframe[0].value["student"]) == ["ann", "bob"]


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
