"""Quizzes for the Self-test part and ``python -m core quiz``: creating one (phantoms or labeled images, with the
models' answer frozen into each film), listing them, their films, a student's answers and score, the results a
viewer may see, and teacher keys. The stored quizzes themselves are ``core.data.quizzes``."""
from __future__ import annotations

import functools
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np

from core import settings
from core.data import quizzes
from core.inference.teaching.explore import predictor_for
from core.inference.teaching.films import Film, TeachingError

@functools.lru_cache(maxsize=4)
def quiz_store(url: str) -> quizzes.QuizStore:
    return quizzes.QuizStore(url)


def _store() -> quizzes.QuizStore:
    return quiz_store(settings.db_url())


def create_quiz(*, title: str, teacher: str, films: int, seed: int = 0, dataset: str | None = None,
                show_angle: bool = False, with_model: bool = True,
                runs: Sequence[str | None] = (None, None, None), actor=None) -> quizzes.Quiz:
    """A quiz of ``films`` phantoms of ``seed`` (or labeled images of ``dataset``); each film carries the models'
    answer when a classifier is promoted. ``actor``: the session token (team mode: a reviewer's or an admin's)."""
    from core.data.store import AnnotationStore

    teacher = _store().teacher_for(actor, teacher)  # before the films are drawn
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise TeachingError(f"the quiz seed must be a whole number from 0 to {2**31 - 1}, not {seed!r}")
    if dataset:
        source, items = "dataset", quizzes.dataset_items(films, seed, dataset, AnnotationStore())
    else:
        source, items = "phantom", quizzes.phantom_items(films, seed)
    draft = quizzes.Quiz(0, title, teacher, None, source, seed, dataset, show_angle, quizzes.FILM_SIZE, tuple(items))
    predictor = predictor_for(runs)[0] if with_model else None
    if predictor is not None:
        answered = []
        for item in items:
            film = Film(name=f"film {item.position}", pixels=_as_float(quizzes.film_pixels(draft, item)),
                        key=("quiz-item", source, item.phantom_seed, item.image_id))
            prediction = predictor.predict(film.radiograph(), name=film.name, cam_method=None)
            verdict = prediction.verdict  # the class Predict would give: None for a film it does not judge
            m = prediction.measurements
            cobb = None if m is None or not verdict.angle_shown else m.cobb_c2c7
            answered.append(item.with_model(verdict.curvature_class, prediction.probabilities, cobb,
                                            predictor.model_name))
        items = answered
    # single-user mode: the key that makes its holder this quiz's teacher on a shared page (team mode: the role)
    key = None if _store().team_mode() else quizzes.new_teacher_key()
    quiz_id = _store().create(title=title, teacher=teacher, source=source, seed=seed, items=items, dataset=dataset,
                              show_angle=show_angle, actor=actor, teacher_key=key)
    return replace(_store().quiz(quiz_id), teacher_key=key)


def model_said(item: quizzes.QuizItem) -> str:
    """The models' answer frozen into a quiz film, in words: its class, "not judged", or "no model answer"."""
    if item.model_class:
        return item.model_class
    return "not judged" if item.model_name else "no model answer"


def _as_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype.kind == "u":
        return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)
    return np.asarray(pixels, dtype=np.float32)


def list_quizzes() -> list[quizzes.Quiz]:
    return _store().quizzes()


def quiz(quiz_id: int) -> quizzes.Quiz:
    return _store().quiz(quiz_id)


@functools.lru_cache(maxsize=64)
def _quiz_film(quiz_id: int, position: int, source: str, phantom_seed, image_path, truth_class: str,
               film_size: int) -> np.ndarray:
    draft = quizzes.Quiz(quiz_id, "", "", None, source, 0, None, False, film_size)
    item = quizzes.QuizItem(position=position, truth_class=truth_class, phantom_seed=phantom_seed, image_path=image_path)
    return _as_float(quizzes.film_pixels(draft, item))


def quiz_films(the_quiz: quizzes.Quiz) -> list[np.ndarray]:
    """Every film of a quiz, in order (phantoms are redrawn once per process)."""
    return [_quiz_film(the_quiz.quiz_id, item.position, the_quiz.source, item.phantom_seed, item.image_path,
                       item.truth_class, the_quiz.film_size) for item in the_quiz.items]


def submit_answers(quiz_id: int, student: str | None, answers: Mapping[int, str],
                   actor=None) -> quizzes.StudentResult:
    """Store a student's answers and return their score, confusion matrix and missed films (team mode: the
    signed-in user's, ``actor`` being the session token)."""
    _store().answer(quiz_id, student, answers, actor=actor)
    return _store().results(quiz_id).student(_store().student_for(actor, student))


def quiz_results(quiz_id: int) -> quizzes.QuizResults:
    """Everyone's answers, unchecked: the shell and the engine's own use. A page asks :func:`class_results`."""
    return _store().results(quiz_id)


def class_results(quiz_id: int, actor=None, teacher_key: str | None = None) -> quizzes.QuizResults:
    """What the page's viewer may see of a quiz's answers (``QuizStore.results_for``): everyone's for its teacher
    (team mode: a reviewer or an admin; single-user mode: whoever gives the quiz's teacher key), else their own."""
    return _store().results_for(quiz_id, actor=actor, teacher_key=teacher_key)


def new_teacher_key(quiz_id: int, actor=None) -> str:
    """A new teacher key for a quiz, from the shell only (``python -m core quiz key N``)."""
    return _store().issue_teacher_key(quiz_id, actor=actor)
