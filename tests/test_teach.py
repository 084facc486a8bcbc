"""The Teach engine: Explore films and their geometry, the four-point angle, quizzes in the real SQLite store, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, inspect, text

from core import cli
from core.data import quizzes
from core.data.measure import measure_landmarks
from core.data.store import AnnotationStore
from core.inference.teaching import explore, films, geometry, quiz
from core.settings import CLASSES, db_url

ROOT = Path(__file__).resolve().parents[1]
SIZE = 192  # px: small films keep these tests quick


def settings(**changes) -> films.FilmSettings:
    return films.FilmSettings(size=SIZE, seed=4, **changes)


def test_same_settings_give_the_same_film_and_the_truth_follows_the_angle(workspace):
    first, again = films.phantom_film(settings(cobb_c2c7=20)), films.phantom_film(settings(cobb_c2c7=20))
    assert np.array_equal(first.pixels, again.pixels) and first.pixels.shape[0] == SIZE
    moved = films.phantom_film(settings(cobb_c2c7=5))
    assert moved.truth.cobb_c2c7 - first.truth.cobb_c2c7 == pytest.approx(-15.0, abs=0.02)
    # The rule's default thresholds: normal >= 10, reversed <= -4, straightened between.
    classes = {angle: films.phantom_film(settings(cobb_c2c7=angle)).truth.rule_class for angle in (10, 9, -3, -4)}
    assert classes == {10: "normal", 9: "straightened", -3: "straightened", -4: "reversed"}


def test_shoulders_facing_exposure_and_noise(workspace):
    hidden, clear = films.phantom_film(settings(c7_hidden=True)), films.phantom_film(settings(c7_hidden=False))
    assert hidden.c7_hidden is True and clear.c7_hidden is False
    left = films.phantom_film(settings(facing="left"))
    assert left.facing == "left" and left.truth.cobb_c2c7 == pytest.approx(20.0, abs=0.02)
    plain = films.phantom_film(settings())
    darker = films.phantom_film(settings(exposure_stops=1.0))
    noisy = films.phantom_film(settings(noise=0.1))
    assert darker.pixels.mean() < plain.pixels.mean()
    assert np.abs(noisy.pixels - plain.pixels).mean() > 0.03
    assert np.array_equal(noisy.pixels, films.phantom_film(settings(noise=0.1)).pixels)  # the noise is seeded
    assert darker.truth == plain.truth == noisy.truth  # the film changes, the spine does not


@pytest.mark.parametrize("bad, message", [(dict(cobb_c2c7=55), "between -30 and 40"),
                                          (dict(facing="up"), "facing"), (dict(noise="lots"), "must be a number"),
                                          (dict(seed=-1), "seed")])
def test_bad_settings_are_one_clear_error(workspace, bad, message):
    with pytest.raises(films.TeachingError, match=message):
        films.phantom_film(films.FilmSettings(**{"size": SIZE, **bad}))


@pytest.mark.parametrize("facing", ["right", "left"])
def test_four_points_on_the_true_corners_give_the_measured_angle(workspace, facing):
    film = films.phantom_film(settings(cobb_c2c7=-7, facing=facing))
    corners = geometry.truth_endplates(film.landmarks)
    assert geometry.endplate_cobb(corners, facing) == pytest.approx(film.truth.cobb_c2c7, abs=1e-6)
    swapped = corners[[1, 0, 3, 2]]  # either order within each endplate
    assert geometry.endplate_cobb(swapped, facing) == pytest.approx(film.truth.cobb_c2c7, abs=1e-6)
    with pytest.raises(films.TeachingError, match="on top of each other"):
        geometry.endplate_cobb(np.array([corners[0], corners[0], corners[2], corners[3]]), facing)


def test_the_construction_is_the_one_measured(workspace):
    film = films.phantom_film(settings(cobb_c2c7=25))
    cons = geometry.construction(film.landmarks, film.facing, film.truth, SIZE)
    for (posterior, anterior), (start, end) in zip((cons.endplates[:2], cons.endplates[2:]), cons.perpendiculars):
        plate, normal = anterior - posterior, end - start
        assert abs(np.dot(plate, normal)) / (np.linalg.norm(plate) * np.linalg.norm(normal)) < 1e-6
    for (corner, foot, value), toyama in zip(cons.distances, film.truth.toyama_px):
        assert np.linalg.norm(corner - foot) == pytest.approx(abs(toyama), rel=1e-6) and value == toyama
    point, foot, depth = cons.arc
    assert np.linalg.norm(point - foot) == pytest.approx(abs(film.truth.arc_depth_px), rel=1e-6)
    exploration = explore.explore(settings(cobb_c2c7=25))
    assert exploration.model is None and "nothing is promoted" in exploration.model_missing
    assert exploration.picture.size == (film.pixels.shape[1], SIZE)


def test_canvas_points_are_the_circle_centres_in_film_pixels():
    from ui.teach_views import canvas_points

    # The point tool's own object: left = x - (radius + stroke / 2), originX "left", originY "center".
    drawing = {"objects": [{"type": "circle", "left": 100 - 4.5, "top": 50, "radius": 4, "strokeWidth": 1,
                            "originX": "left", "originY": "center"},
                           {"type": "path", "left": 0, "top": 0},
                           {"type": "circle", "left": 30, "top": 40, "radius": 4, "strokeWidth": 1, "scaleX": 2,
                            "scaleY": 2, "originX": "center", "originY": "center"}]}
    assert canvas_points(drawing, scale=0.5) == [(200.0, 100.0), (60.0, 80.0)]
    assert canvas_points(None, 1.0) == []


# ---------------------------------------------------------------- quizzes


def answers_for(quiz: quizzes.Quiz, wrong: set[int]) -> dict[int, str]:
    """Right answers except at the positions in ``wrong`` (there: the next class)."""
    return {item.position: CLASSES[(CLASSES.index(item.truth_class) + (item.position in wrong)) % 3]
            for item in quiz.items}


@pytest.mark.slow
@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_a_phantom_quiz_in_the_annotation_database(workspace):
    made = quiz.create_quiz(title="Week 3", teacher="Dr Ortiz", films=5, seed=7)
    assert [item.position for item in made.items] == [1, 2, 3, 4, 5]
    assert sorted(item.truth_class for item in made.items) == sorted(["normal", "normal", "straightened",
                                                                     "straightened", "reversed"])
    assert all(item.model_class is None for item in made.items)  # nothing promoted
    # The film is the phantom of its seed, and its truth is that phantom's own.
    films = quiz.quiz_films(made)
    for item, pixels in zip(made.items, films):
        from core.data.phantom import generate_case

        case = generate_case(item.phantom_seed, size=made.film_size, curvature_class=item.truth_class)
        assert case.curvature_class == item.truth_class and case.cobb_c2c7 == pytest.approx(item.truth_cobb, abs=1e-6)
        assert pixels.shape == case.image.shape

    quiz.submit_answers(made.quiz_id, "Ana", answers_for(made, wrong={2, 5}))
    first_ben = quiz.submit_answers(made.quiz_id, "Ben", answers_for(made, wrong={1, 2, 3, 4, 5}))
    assert first_ben.correct == 0
    ben = quiz.submit_answers(made.quiz_id, "  Ben ", answers_for(made, wrong=set()))  # a second try counts
    assert (ben.student, ben.correct, ben.total, ben.missed) == ("Ben", 5, 5, [])

    results = quiz.quiz_results(made.quiz_id)
    ana = results.student("Ana")
    assert (ana.correct, ana.total) == (3, 5)
    assert [item.position for item, _ in ana.missed] == [2, 5]
    assert ana.confusion.sum() == 5 and np.trace(ana.confusion) == 3
    truth_two = CLASSES.index(made.items[1].truth_class)
    assert ana.confusion[truth_two, (truth_two + 1) % 3] >= 1
    per_film = {row["film"]: row for row in results.per_film()}
    assert per_film[2]["answers"] == 2 and per_film[2]["correct"] == 1 and per_film[1]["correct_rate"] == 1.0
    rows = results.csv().splitlines()
    assert rows[0] == "quiz_id,student,film,answer,truth,correct,truth_cobb,model_class,answered_at"
    assert len(rows) == 1 + 10  # the newest answer per student and film

    # Append-only: Ben's first answers are still there; the store's own tables sit in the same database.
    assert AnnotationStore().count_images() == 0
    engine = create_engine(db_url())
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from quiz_answers where student = 'Ben'")).scalar() == 10
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"images", "labels", "quizzes", "quiz_items", "quiz_answers"} <= tables


@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_bad_quiz_requests_say_what_to_fix(workspace):
    made = quiz.create_quiz(title="Q", teacher="T", films=3, seed=1)
    answers = answers_for(made, wrong=set())
    with pytest.raises(quizzes.QuizError, match="enter a name"):
        quiz.submit_answers(made.quiz_id, "  ", answers)
    with pytest.raises(quizzes.QuizError, match=r"missing: 2"):
        quiz.submit_answers(made.quiz_id, "Ana", {**answers, 2: None})
    with pytest.raises(quizzes.QuizError, match="unknown class lordotic"):
        quiz.submit_answers(made.quiz_id, "Ana", {**answers, 1: "lordotic"})
    with pytest.raises(quizzes.QuizError, match="from 1 to 50 films"):
        quiz.create_quiz(title="Q", teacher="T", films=0)
    with pytest.raises(quizzes.QuizError, match="no quiz 99"):
        quiz.quiz_results(99)
    with pytest.raises(quizzes.QuizError, match="has 0 images with a class label"):
        quiz.create_quiz(title="Q", teacher="T", films=2, dataset="nothing")
    assert quiz.quiz_results(made.quiz_id).students == []  # nothing half-written


def add_labeled_phantoms(home: Path, dataset: str, count: int) -> None:
    """Phantom PNGs in the workspace, registered in the store with class and landmarks (as an import would)."""
    from core.data.phantom import generate_case

    folder = home / "images" / dataset
    folder.mkdir(parents=True)
    store = AnnotationStore()
    for number in range(count):
        case = generate_case(900 + number, size=SIZE, curvature_class=CLASSES[number % 3])
        path = folder / f"film{number}.png"
        Image.fromarray(case.image).save(path)
        image_id = store.add_image(str(path.relative_to(home)), sha256=f"{number:064d}", width=case.width,
                                   height=case.height, patient_id=f"P{number}", source="test", dataset=dataset)
        store.save_label(image_id, annotator="tester", curvature_class=case.curvature_class,
                         landmarks=case.landmarks)


@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_a_dataset_quiz_takes_labeled_images_and_their_labels(workspace):
    add_labeled_phantoms(workspace, "films", 4)
    made = quiz.create_quiz(title="Real films", teacher="T", films=3, seed=2, dataset="films")
    assert made.source == "dataset" and len({item.image_id for item in made.items}) == 3
    labels = {item.image_id: item for item in AnnotationStore().current_labels("films")}
    for item, pixels in zip(made.items, quiz.quiz_films(made)):
        label = labels[item.image_id]
        assert item.truth_class == label.curvature_class and item.image_path == label.path
        assert item.truth_cobb == pytest.approx(measure_landmarks(label.landmarks).cobb_c2c7)
        assert pixels.shape == (SIZE, label.width)
    film = films.dataset_film(made.items[0].image_id)
    assert film.truth.cobb_c2c7 == pytest.approx(made.items[0].truth_cobb)
    with pytest.raises(quizzes.QuizError, match="a quiz of 5 films needs at least 5"):
        quiz.create_quiz(title="Q", teacher="T", films=5, dataset="films")


@pytest.mark.slow
@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_two_processes_answering_at_once_both_land(workspace):
    made = quiz.create_quiz(title="Q", teacher="T", films=3, seed=3)
    answers = ",".join(item.truth_class for item in made.items)
    students = [subprocess.Popen([sys.executable, "-m", "core", "quiz", "answer", str(made.quiz_id), "--student",
                                  name, "--answers", answers], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                for name in ("Ana", "Ben")]
    outputs = [student.communicate(timeout=120)[0] for student in students]
    assert all(student.returncode == 0 for student in students)
    assert sorted(outputs) == ["Ana: 3/3 correct\n", "Ben: 3/3 correct\n"]
    assert sorted(s.student for s in quiz.quiz_results(made.quiz_id).students) == ["Ana", "Ben"]


@pytest.mark.usefixtures("database")  # on SQLite, then on PostgreSQL
def test_the_quiz_command_creates_answers_and_reports(workspace, tmp_path, capsys):
    assert cli.main(["quiz", "create", "--films", "5", "--seed", "11", "--title", "CLI quiz", "--no-model"]) == 0
    created = capsys.readouterr().out
    assert created.startswith("quiz 1: #1 CLI quiz (5 films, phantoms, by teacher)")
    truths = [line.split(": ")[1].split(" ")[0] for line in created.splitlines()[1:]]
    wrong = truths[:4] + [CLASSES[(CLASSES.index(truths[4]) + 1) % 3]]
    assert cli.main(["quiz", "answer", "1", "--student", "Ana", "--answers", ",".join(wrong)]) == 0
    assert capsys.readouterr().out == "Ana: 4/5 correct\n"
    out = tmp_path / "answers.csv"
    assert cli.main(["quiz", "results", "1", "--json", "--csv", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["students"][0]["correct"] == 4 and report["students"][0]["missed"] == [5]
    assert len(out.read_text().splitlines()) == 6
    assert cli.main(["quiz", "answer", "1", "--student", "Ana", "--answers", "normal"]) == 2
    assert "answer every film first (missing: 2, 3, 4, 5)" in capsys.readouterr().err
    assert cli.main(["quiz", "list"]) == 0 and "CLI quiz" in capsys.readouterr().out
    assert not math.isnan(report["films"][0]["correct_rate"])
