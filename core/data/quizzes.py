"""Quizzes for the Teach page: a teacher sets N films, students answer each film's class; each student sees their own
score, and only the quiz's teacher sees the whole class's answers (:meth:`QuizStore.results_for`).

The tables live in the annotation database (the same SQLite file or server as ``core.data.store``), on an engine
built the store's way: WAL and a busy timeout on SQLite, and writes that take the write lock first
(``BEGIN IMMEDIATE``), so two browser sessions or a page and ``python -m core quiz`` answering at once both land.
They are created on first use (``create_all`` only adds missing tables; the store's own tables are untouched).

``quizzes``       one row per quiz: title, teacher, created_at, source ("phantom" | "dataset"), seed, dataset,
                  show_angle, film_size
``quiz_items``    the films, in order: a phantom seed or a store image, the truth frozen at creation
                  (class, Cobb C2–C7, facing) and the promoted models' answer at creation (the class their
                  verdict gives, None for a film they do not judge; probabilities, own angle, model name)
``quiz_answers``  append-only: one row per film per submission, with the student's name and the time; a student's
                  score counts their newest answer to each film, and every earlier one stays.
``quiz_keys``     single-user mode: the sha256 of each quiz's teacher key (the key itself is shown once, when the
                  quiz is set, or printed by ``python -m core quiz key N``). A name typed on a shared page proves
                  nothing, so the key is what makes someone the quiz's teacher there; in team mode the role does.

A film is never stored: a phantom item is redrawn from its seed (byte-identical), a dataset item is read from the
workspace path it had at creation.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Mapping, Sequence

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
)

from core import settings
from core.data.exports import spreadsheet_safe
from core.data.measure import LandmarkError, RuleThresholds, classify_cobb, measure_landmarks
from core.data.phantom import case_landmarks, generate_case
from core.data.store import AnnotationStore, Database
from core.settings import CLASSES

SOURCES = ("phantom", "dataset")
MAX_FILMS = 50
FILM_SIZE = 512  # px, the height phantom films are drawn at
NAME_MAX = 200

metadata = MetaData()

quizzes_table = Table(
    "quizzes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("title", String(NAME_MAX), nullable=False),
    Column("teacher", String(NAME_MAX), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("source", String(10), nullable=False),  # "phantom" | "dataset"
    Column("seed", Integer, nullable=False),
    Column("dataset", String(200)),  # the store dataset of a "dataset" quiz
    Column("show_angle", Boolean, nullable=False),
    Column("film_size", Integer, nullable=False),
)

quiz_items_table = Table(
    "quiz_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("quiz_id", Integer, ForeignKey("quizzes.id"), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # 1..N, the order students see
    Column("phantom_seed", Integer),  # phantom items
    Column("image_id", Integer),  # dataset items: images.id of the annotation store
    Column("image_path", Text),  # dataset items: relative to the workspace, as it was at creation
    Column("truth_class", String(20), nullable=False),
    Column("truth_cobb", Float),  # None for a dataset image without landmarks
    Column("facing", String(5)),
    Column("model_class", String(20)),  # None: no classifier at creation, or (model_name set) the film not judged
    Column("model_probabilities", JSON),
    Column("model_cobb", Float),
    Column("model_name", String(200)),
    UniqueConstraint("quiz_id", "position", name="uq_quiz_position"),
)

quiz_answers_table = Table(
    "quiz_answers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("quiz_id", Integer, ForeignKey("quizzes.id"), nullable=False, index=True),
    Column("item_id", Integer, ForeignKey("quiz_items.id"), nullable=False),
    Column("student", String(NAME_MAX), nullable=False),
    Column("answer", String(20), nullable=False),
    Column("answered_at", DateTime(timezone=True), nullable=False),
)

quiz_keys_table = Table(
    "quiz_keys",
    metadata,
    Column("quiz_id", Integer, ForeignKey("quizzes.id"), primary_key=True),
    Column("key_sha256", String(64), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
)
# A teacher key: 12 characters of an alphabet without look-alikes (0/O, 1/I/L, U/V), ~58 bits, typed as XXXX-XXXX-XXXX
KEY_ALPHABET = "ABCDEFGHJKMNPQRSTWXYZ23456789"
KEY_LENGTH = 12


class QuizError(ValueError):
    """A quiz request that cannot be done (no such quiz, too few labeled images, a missing answer...)."""


@dataclass(frozen=True)
class QuizItem:
    position: int
    truth_class: str
    truth_cobb: float | None = None
    facing: str | None = None
    phantom_seed: int | None = None
    image_id: int | None = None
    image_path: str | None = None
    model_class: str | None = None
    model_probabilities: dict | None = None
    model_cobb: float | None = None
    model_name: str | None = None
    item_id: int | None = None  # set once stored

    def with_model(self, curvature_class: str | None, probabilities: Mapping[str, float], cobb: float | None,
                   name: str) -> "QuizItem":
        return QuizItem(**{**vars(self), "model_class": curvature_class,
                           "model_probabilities": {k: float(v) for k, v in probabilities.items()},
                           "model_cobb": None if cobb is None else float(cobb), "model_name": name})


@dataclass(frozen=True)
class Quiz:
    quiz_id: int
    title: str
    teacher: str
    created_at: datetime
    source: str
    seed: int
    dataset: str | None
    show_angle: bool
    film_size: int
    items: tuple[QuizItem, ...] = ()
    # The teacher key in clear, only on the Quiz returned at creation (single-user mode); only its hash is stored
    teacher_key: str | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        where = "phantoms" if self.source == "phantom" else f"dataset {self.dataset}"
        return f"#{self.quiz_id} {self.title} ({len(self.items)} films, {where}, by {self.teacher})"


@dataclass
class StudentResult:
    student: str
    correct: int
    total: int
    confusion: np.ndarray  # 3 x 3 counts, rows = truth, columns = answer, CLASSES order
    missed: list[tuple[QuizItem, str]]  # (item, the student's answer)
    answered_at: datetime

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class QuizResults:
    quiz: Quiz
    students: list[StudentResult] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)  # newest answer per (student, film): the CSV rows
    everyone: bool = True  # False: only the viewer's own answers (:meth:`QuizStore.results_for`)

    def only(self, name: str | None) -> "QuizResults":
        """The same results cut down to one student's answers (none when ``name`` is None)."""
        return replace(self, students=[s for s in self.students if name is not None and s.student == name],
                       answers=[row for row in self.answers if name is not None and row["student"] == name],
                       everyone=False)

    def per_film(self) -> list[dict]:
        """Each film: how many answered it, how many were right, and the commonest wrong answer."""
        rows = []
        for item in self.quiz.items:
            given = [row["answer"] for row in self.answers if row["position"] == item.position]
            wrong = [answer for answer in given if answer != item.truth_class]
            rows.append({"film": item.position, "truth": item.truth_class, "answers": len(given),
                         "correct": len(given) - len(wrong),
                         "correct_rate": (len(given) - len(wrong)) / len(given) if given else None,
                         "commonest_wrong": max(set(wrong), key=wrong.count) if wrong else None,
                         "model": item.model_class})
        return rows

    def student(self, name: str) -> StudentResult | None:
        return next((s for s in self.students if s.student == clean_name(name)), None)

    def csv(self) -> str:
        buffer = io.StringIO()
        columns = ["quiz_id", "student", "film", "answer", "truth", "correct", "truth_cobb", "model_class",
                   "answered_at"]
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.answers:
            cells = {**row, "quiz_id": self.quiz.quiz_id, "film": row["position"],
                     "answered_at": row["answered_at"].isoformat(timespec="seconds")}
            writer.writerow({k: spreadsheet_safe(v) for k, v in cells.items()})  # student names are typed text
        return buffer.getvalue()


def clean_name(name: str) -> str:
    """A student or teacher name as stored: trimmed, whitespace collapsed, 1..200 characters."""
    cleaned = " ".join(str(name or "").split())
    if not cleaned:
        raise QuizError("enter a name")
    if len(cleaned) > NAME_MAX:
        raise QuizError(f"a name is at most {NAME_MAX} characters")
    return cleaned


def new_teacher_key() -> str:
    """A fresh teacher key, ``XXXX-XXXX-XXXX``."""
    key = "".join(secrets.choice(KEY_ALPHABET) for _ in range(KEY_LENGTH))
    return "-".join(key[i:i + 4] for i in range(0, KEY_LENGTH, 4))


def _key_digest(key: str) -> str:
    """The stored form of a key: typed in any case, with or without its dashes and spaces."""
    typed = "".join(ch for ch in str(key or "").upper() if ch.isalnum())
    return hashlib.sha256(typed.encode("ascii", "replace")).hexdigest()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value  # SQLite returns naive


# ---------------------------------------------------------------- choosing the films


def _item_seed(seed: int, position: int) -> int:
    """A 31-bit phantom seed per (quiz seed, film): stable and independent of the other films."""
    return int(np.random.SeedSequence([int(seed), int(position), 0x0412]).generate_state(1)[0] >> 1)


def phantom_items(films: int, seed: int, size: int = FILM_SIZE,
                  thresholds: RuleThresholds | None = None) -> list[QuizItem]:
    """``films`` phantoms, the classes as even as the count allows and shuffled by ``seed``; geometry only, no
    rendering (the class and angle come from the phantom's own ground truth)."""
    films = _check_count(films)
    thresholds = thresholds or RuleThresholds.from_env()
    rng = np.random.default_rng([int(seed), 0x0411])
    classes = [CLASSES[i % len(CLASSES)] for i in range(films)]
    rng.shuffle(classes)
    items = []
    for position, curvature_class in enumerate(classes, start=1):
        phantom_seed = _item_seed(seed, position)
        landmarks, _, _, facing = case_landmarks(phantom_seed, size=size, curvature_class=curvature_class)
        cobb = measure_landmarks(landmarks, facing=facing, thresholds=thresholds).cobb_c2c7
        items.append(QuizItem(position=position, truth_class=classify_cobb(cobb, thresholds), truth_cobb=cobb,
                              facing=facing, phantom_seed=phantom_seed))
    return items


def dataset_items(films: int, seed: int, dataset: str, store: AnnotationStore,
                  thresholds: RuleThresholds | None = None) -> list[QuizItem]:
    """``films`` labeled images of ``dataset`` drawn by ``seed``; the truth is each image's current class label,
    and its angle is measured on its landmarks when it has them."""
    films = _check_count(films)
    labeled = [item for item in store.current_labels(dataset, labeled_only=True) if item.curvature_class]
    if len(labeled) < films:
        raise QuizError(f"dataset {dataset!r} has {len(labeled)} images with a class label; "
                        f"a quiz of {films} films needs at least {films}")
    rng = np.random.default_rng([int(seed), 0x0413])
    chosen = [labeled[i] for i in sorted(rng.choice(len(labeled), size=films, replace=False))]
    rng.shuffle(chosen)
    items = []
    for position, image in enumerate(chosen, start=1):
        cobb = facing = None
        if image.landmarks is not None:
            try:
                measured = measure_landmarks(image.landmarks, thresholds=thresholds)
                cobb, facing = measured.cobb_c2c7, measured.facing
            except LandmarkError:
                pass  # incomplete landmarks: the class label is still the truth
        items.append(QuizItem(position=position, truth_class=image.curvature_class, truth_cobb=cobb, facing=facing,
                              image_id=image.image_id, image_path=image.path))
    return items


def _check_count(films) -> int:
    if isinstance(films, bool) or not isinstance(films, (int, np.integer)) or not 1 <= int(films) <= MAX_FILMS:
        raise QuizError(f"a quiz has from 1 to {MAX_FILMS} films, not {films!r}")
    return int(films)


def film_pixels(quiz: Quiz, item: QuizItem) -> np.ndarray:
    """The film of one item: uint8/uint16 or float pixels for display (a phantom redrawn from its seed)."""
    from core.data.imaging import read_image

    if item.phantom_seed is not None:
        return generate_case(item.phantom_seed, size=quiz.film_size, curvature_class=item.truth_class).image
    path = settings.home() / str(item.image_path)
    if not path.is_file():
        raise QuizError(f"film {item.position} of quiz {quiz.quiz_id}: its image {item.image_path} is no longer "
                        "in the workspace")
    return read_image(path).pixels


# ---------------------------------------------------------------- the store


class QuizStore(Database):
    """Quizzes and answers in the workspace's annotation database."""

    def __init__(self, url: str | None = None):
        super().__init__(url)
        with self._write() as conn:
            metadata.create_all(conn)

    # -- writes

    def create(self, *, title: str, teacher: str, source: str, seed: int, items: Sequence[QuizItem],
               dataset: str | None = None, show_angle: bool = False, film_size: int = FILM_SIZE, actor=None,
               teacher_key: str | None = None) -> int:
        """Store a quiz and its films in one transaction; returns the quiz id. In team mode ``actor`` (the session
        token) must be a reviewer's or an admin's, and the teacher recorded is that user. ``teacher_key``
        (:func:`new_teacher_key`): its hash is stored with the quiz, and whoever gives it sees the class's answers
        in single-user mode."""
        teacher = self._acting_as(actor, "create_quiz", teacher, f"quiz {title!r}")
        if source not in SOURCES:
            raise QuizError(f"a quiz's films come from {' or '.join(SOURCES)}, not {source!r}")
        if not items:
            raise QuizError("a quiz needs at least one film")
        with self._write() as conn:
            quiz_id = conn.execute(insert(quizzes_table).values(
                title=clean_name(title), teacher=clean_name(teacher), created_at=datetime.now(timezone.utc),
                source=source, seed=int(seed), dataset=dataset, show_angle=bool(show_angle),
                film_size=int(film_size))).inserted_primary_key[0]
            conn.execute(insert(quiz_items_table), [
                {k: v for k, v in vars(item).items() if k != "item_id"} | {"quiz_id": quiz_id} for item in items])
            if teacher_key:
                conn.execute(insert(quiz_keys_table).values(quiz_id=quiz_id, key_sha256=_key_digest(teacher_key),
                                                            issued_at=datetime.now(timezone.utc)))
        return int(quiz_id)

    def issue_teacher_key(self, quiz_id: int, actor=None) -> str:
        """A new teacher key for a quiz (the old one stops working); from the shell only (``python -m core quiz key
        N``): on a shared single-user page anyone could ask, and the key is what tells the teacher apart there."""
        from core.data.accounts import SHELL, PermissionDenied

        quiz = self.quiz(quiz_id)
        if actor is not SHELL:
            raise PermissionDenied(f"a new teacher key for quiz {quiz.quiz_id} is issued from the shell: "
                                   f"python -m core quiz key {quiz.quiz_id}")
        key = new_teacher_key()
        with self._write() as conn:
            conn.execute(delete(quiz_keys_table).where(quiz_keys_table.c.quiz_id == quiz.quiz_id))
            conn.execute(insert(quiz_keys_table).values(quiz_id=quiz.quiz_id, key_sha256=_key_digest(key),
                                                        issued_at=datetime.now(timezone.utc)))
        return key

    def team_mode(self) -> bool:
        from core.data.accounts import Accounts

        with Accounts(self.url) as accounts:
            return accounts.team_mode()

    def answer(self, quiz_id: int, student: str | None, answers: Mapping[int, str], actor=None) -> datetime:
        """Append one submission (every film's class, by position); returns its time. In team mode the answers are
        the signed-in user's: another student's name is refused (and audited), none means the user's own."""
        quiz = self.quiz(quiz_id)
        student = self._acting_as(actor, "answer_quiz", student, f"quiz {quiz.quiz_id}")
        missing = [item.position for item in quiz.items if not answers.get(item.position)]
        if missing:
            raise QuizError("answer every film first (missing: " + ", ".join(map(str, missing)) + ")")
        unknown = sorted({str(a) for a in answers.values() if a not in CLASSES})
        if unknown:
            raise QuizError(f"unknown class {', '.join(unknown)}; answer one of {', '.join(CLASSES)}")
        now = datetime.now(timezone.utc)
        with self._write() as conn:
            conn.execute(insert(quiz_answers_table), [
                {"quiz_id": quiz.quiz_id, "item_id": item.item_id, "student": student,
                 "answer": answers[item.position], "answered_at": now} for item in quiz.items])
        return now

    def student_for(self, actor, student: str | None) -> str:
        """The name :meth:`answer` records for ``actor``: the signed-in user's in team mode, else ``student``."""
        from core.data.accounts import SHELL, Accounts

        if actor is not SHELL and isinstance(actor, str):
            with Accounts(self.url) as accounts:
                user = accounts.user_for(actor)
            if user is not None:
                return user.name
        return clean_name(student)

    def teacher_for(self, actor, teacher: str | None) -> str:
        """The teacher a new quiz records, checked before its films are drawn (PermissionDenied otherwise)."""
        return self._acting_as(actor, "create_quiz", teacher, "new quiz")

    def _acting_as(self, actor, action: str, name: str | None, target: str) -> str:
        """The name recorded: the page's (cleaned) in single-user mode and from the shell, the signed-in user's in
        team mode, where naming anyone else is refused."""
        from core.data.accounts import OWNER, SHELL, Accounts, PermissionDenied, authorize

        user = authorize(actor, action, target, url=self.url)
        if user in (OWNER, SHELL):
            return clean_name(name)
        given = " ".join(str(name or "").split())
        if given and given != user.name:
            with Accounts(self.url) as accounts:
                accounts.record(user.name, action, f"{target} as {given[:NAME_MAX]!r}", allowed=False)
            raise PermissionDenied(f"{action}: signed in as {user.name!r}, you cannot act as {given!r}")
        return user.name

    # -- reads

    def quizzes(self) -> list[Quiz]:
        """Every quiz, newest first, with its films."""
        with self._read() as conn:
            rows = conn.execute(select(quizzes_table).order_by(quizzes_table.c.id.desc())).mappings().all()
            items = conn.execute(select(quiz_items_table).order_by(quiz_items_table.c.position)).mappings().all()
        by_quiz: dict[int, list[QuizItem]] = {}
        for row in items:
            by_quiz.setdefault(row["quiz_id"], []).append(_item(row))
        return [_quiz(row, by_quiz.get(row["id"], [])) for row in rows]

    def quiz(self, quiz_id: int) -> Quiz:
        try:
            quiz_id = int(quiz_id)
        except (TypeError, ValueError):
            raise QuizError(f"a quiz id is a number, not {quiz_id!r}") from None
        with self._read() as conn:
            row = conn.execute(select(quizzes_table).where(quizzes_table.c.id == quiz_id)).mappings().first()
            items = conn.execute(select(quiz_items_table).where(quiz_items_table.c.quiz_id == quiz_id)
                                 .order_by(quiz_items_table.c.position)).mappings().all()
        if row is None:
            raise QuizError(f"no quiz {quiz_id} in this workspace")
        return _quiz(row, [_item(r) for r in items])

    def results_for(self, quiz_id: int, actor=None, teacher_key: str | None = None) -> QuizResults:
        """What ``actor`` may see of a quiz's answers. Everyone's (``everyone`` True) for the quiz's teacher: the
        shell; in team mode a user who may set quizzes (reviewer, admin); in single-user mode whoever gives the
        quiz's teacher key. Anyone else sees only their own: in team mode the signed-in user's answers; in
        single-user mode none (a name typed on a shared page proves nothing: the page shows the answers its own
        session submitted). A wrong key is a QuizError, not a quiet empty answer."""
        from core.data.accounts import OWNER, SHELL, authorize

        quiz = self.quiz(quiz_id)
        if actor is SHELL:
            return self.results(quiz.quiz_id)
        user = authorize(actor, "answer_quiz", f"results of quiz {quiz.quiz_id}", url=self.url)
        if user is not OWNER:  # team mode: the role decides, a key is not asked for
            everyone = self.results(quiz.quiz_id)
            return everyone if user.may("create_quiz") else everyone.only(user.name)
        if not teacher_key or not str(teacher_key).strip():
            return QuizResults(quiz, everyone=False)
        with self._read() as conn:
            stored = conn.execute(select(quiz_keys_table.c.key_sha256)
                                  .where(quiz_keys_table.c.quiz_id == quiz.quiz_id)).scalar()
        if stored is None:
            raise QuizError(f"quiz {quiz.quiz_id} has no teacher key (it was set before quizzes had one); its teacher "
                            f"gets one from the shell: python -m core quiz key {quiz.quiz_id}")
        if not hmac.compare_digest(stored, _key_digest(teacher_key)):
            raise QuizError(f"that is not the teacher key of quiz {quiz.quiz_id}")
        return self.results(quiz.quiz_id)

    def results(self, quiz_id: int) -> QuizResults:
        """Scores from each student's newest answer to each film (earlier answers stay in the table): everyone's,
        unchecked (the engine, the shell and tests); a page asks :meth:`results_for`."""
        quiz = self.quiz(quiz_id)
        newest = (select(func.max(quiz_answers_table.c.id).label("id"))
                  .where(quiz_answers_table.c.quiz_id == quiz.quiz_id)
                  .group_by(quiz_answers_table.c.student, quiz_answers_table.c.item_id).subquery())
        query = (select(quiz_answers_table).join(newest, newest.c.id == quiz_answers_table.c.id)
                 .order_by(quiz_answers_table.c.student, quiz_answers_table.c.id))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        items = {item.item_id: item for item in quiz.items}
        results = QuizResults(quiz)
        by_student: dict[str, list] = {}
        for row in rows:
            item = items[row["item_id"]]
            answered_at = _utc(row["answered_at"])
            results.answers.append({"student": row["student"], "position": item.position, "answer": row["answer"],
                                    "truth": item.truth_class, "correct": row["answer"] == item.truth_class,
                                    "truth_cobb": None if item.truth_cobb is None else round(item.truth_cobb, 1),
                                    "model_class": item.model_class, "answered_at": answered_at})
            by_student.setdefault(row["student"], []).append((item, row["answer"], answered_at))
        for student, answered in by_student.items():
            confusion = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
            for item, answer, _ in answered:
                confusion[CLASSES.index(item.truth_class), CLASSES.index(answer)] += 1
            missed = sorted(((item, answer) for item, answer, _ in answered if answer != item.truth_class),
                            key=lambda pair: pair[0].position)
            results.students.append(StudentResult(
                student=student, correct=int(np.trace(confusion)), total=len(answered), confusion=confusion,
                missed=missed, answered_at=max(at for _, _, at in answered)))
        results.answers.sort(key=lambda row: (row["student"], row["position"]))
        return results


def _item(row: Mapping) -> QuizItem:
    return QuizItem(position=row["position"], truth_class=row["truth_class"], truth_cobb=row["truth_cobb"],
                    facing=row["facing"], phantom_seed=row["phantom_seed"], image_id=row["image_id"],
                    image_path=row["image_path"], model_class=row["model_class"],
                    model_probabilities=row["model_probabilities"], model_cobb=row["model_cobb"],
                    model_name=row["model_name"], item_id=row["id"])


def _quiz(row: Mapping, items: list[QuizItem]) -> Quiz:
    return Quiz(quiz_id=row["id"], title=row["title"], teacher=row["teacher"], created_at=_utc(row["created_at"]),
                source=row["source"], seed=row["seed"], dataset=row["dataset"], show_angle=bool(row["show_angle"]),
                film_size=row["film_size"], items=tuple(items))
