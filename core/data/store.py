"""The annotation store: images and their append-only label history (SQLAlchemy 2 Core).

SQLite (WAL, busy timeout) by default; ``CERVICURVE_DB`` may point at PostgreSQL for a team.
Every save is a new ``labels`` row with annotator and time, so nothing is ever overwritten;
the *current* label of an image is its newest row. A save that leaves a field out (None)
carries the current value forward, so an annotator who only draws a box keeps the class.

Splits belong to patients: a new image of a patient the dataset already has gets that patient's split, and a
``set_splits`` that would leave one patient in two splits is refused (nothing written). A dataset's test split
can be frozen (``freeze_test``): from then on no image leaves it and no new patient enters it.

Writes on SQLite start with ``BEGIN IMMEDIATE``: the write lock is taken before the
carry-forward read, so two annotators saving at once queue on the busy timeout instead of
one of them failing with "database is locked" halfway through.

Readings and review (the Label page, schema 3). ``save_reading`` writes one annotator's complete reading as a
new row (no carry-forward: what they saved is theirs), with what changed against their previous reading, the
seconds spent, and — when it started from a model draft — the draft and how far each point was moved (px).
An annotator's *reading* of an image is their newest row. A reviewer accepts, fixes (a new row by the reviewer,
accepted) or rejects a row (``reviews`` table, append-only too). The current label is then the newest accepted
row, else the newest row not rejected; an image whose only rows were rejected has no current label.
"""
from __future__ import annotations

import math
import os
import re
import sqlite3
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from sqlalchemy import (
    JSON,
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
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine

from core import settings
from core.settings import CLASSES

SCHEMA_VERSION = 3  # 2: the datasets table (frozen test split); 3: reading provenance columns, reviews table
SPLITS: tuple[str, ...] = ("train", "val", "test")
N_LANDMARKS = 23
BUSY_TIMEOUT_MS = 30_000
VERDICTS: tuple[str, ...] = ("accept", "fix", "reject")
READING_FIELDS: tuple[str, ...] = ("curvature_class", "roi_box", "landmarks", "note")

metadata = MetaData()

schema_info = Table(
    "schema_info",
    metadata,
    Column("version", Integer, nullable=False),
)

images_table = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("path", Text, nullable=False),  # relative to the workspace folder
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("patient_id", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("dataset", String(200), nullable=False, index=True),
    Column("split", String(10)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("meta", JSON, nullable=False),
    UniqueConstraint("dataset", "sha256", name="uq_image_per_dataset"),
)

datasets_table = Table(
    "datasets",
    metadata,
    Column("dataset", String(200), primary_key=True),
    Column("test_frozen_at", DateTime(timezone=True)),
)

labels_table = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), nullable=False, index=True),
    Column("annotator", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("curvature_class", String(20)),
    Column("roi_box", JSON),
    Column("landmarks", JSON),  # 23 [x, y]; a missing landmark is null (JSON has no NaN)
    Column("note", Text),
    # schema 3 (added in place to older files, see _upgrade): provenance of a reading
    Column("changes", JSON),  # field names that differ from the annotator's previous reading
    Column("seconds", Float),  # time the annotator spent on the image before this save
    Column("draft", JSON),  # the model draft the reading started from: models, class, box, landmarks
    Column("point_moves_px", JSON),  # 23 distances draft point -> saved point; null where either is missing
)

reviews_table = Table(
    "reviews",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id"), nullable=False, index=True),
    Column("label_id", Integer, ForeignKey("labels.id"), nullable=False, index=True),  # the row reviewed
    Column("reviewer", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("verdict", String(10), nullable=False),  # accept | fix | reject
    Column("comment", Text),
    Column("result_label_id", Integer, ForeignKey("labels.id")),  # the accepted row: itself, the fix, or null
)
# Columns schema 3 added to ``labels``; _upgrade adds them to a file made by an older version.
_V3_LABEL_COLUMNS = ("changes", "seconds", "draft", "point_moves_px")


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    sha256: str
    path: str  # relative to the workspace folder
    width: int
    height: int
    patient_id: str
    source: str
    dataset: str
    split: str | None
    created_at: datetime
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LabelRevision:
    label_id: int
    image_id: int
    annotator: str
    created_at: datetime
    curvature_class: str | None
    roi_box: list[float] | None
    landmarks: np.ndarray | None  # (23, 2), nan where missing
    note: str | None
    changes: list[str] | None = None
    seconds: float | None = None
    draft: dict | None = None
    point_moves_px: list[float | None] | None = None

    @property
    def from_draft(self) -> bool:
        return self.draft is not None


@dataclass(frozen=True)
class Reading(LabelRevision):
    """One annotator's reading of an image (their newest row) and its review status."""

    status: str | None = None  # verdict of the newest review of this row: accept | fix | reject; None = unreviewed
    reviewer: str | None = None
    review_comment: str | None = None
    reviewed_at: datetime | None = None


@dataclass(frozen=True)
class Review:
    review_id: int
    image_id: int
    label_id: int
    reviewer: str
    created_at: datetime
    verdict: str
    comment: str | None
    result_label_id: int | None


@dataclass(frozen=True)
class LabeledImage(ImageRecord):
    """An image with its current label; the label fields are None when it was never labeled."""

    curvature_class: str | None = None
    roi_box: list[float] | None = None
    landmarks: np.ndarray | None = None
    note: str | None = None
    annotator: str | None = None
    labeled_at: datetime | None = None
    label_id: int | None = None

    @property
    def class_index(self) -> int | None:
        return None if self.curvature_class is None else CLASSES.index(self.curvature_class)


# ---------------------------------------------------------------- validation


# A dataset name ends up in folder and file names (exports, YOLO copies): a plain name, never a path.
DATASET_NAME = re.compile(r"[A-Za-z0-9_-]([A-Za-z0-9_. -]{0,98}[A-Za-z0-9_.-])?")


def check_dataset_name(name: Any) -> str:
    """``name`` when it is a plain dataset name (letters, digits, ``-``, ``_``, ``.`` and inner spaces, not starting
    with ``.``, at most 100 characters), else ValueError in one line. Import and export check every name here."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        shown = repr(str(name)) if len(str(name)) <= 60 else repr(str(name)[:57] + "...")
        raise ValueError(f"dataset name {shown} refused: use 1 to 100 letters, digits, '-', '_', '.' or inner "
                         "spaces, not starting with '.' (e.g. films-2024)")
    return name


def validate_class(curvature_class: str) -> str:
    if curvature_class not in CLASSES:
        raise ValueError(f"unknown curvature class {curvature_class!r}; expected one of {', '.join(CLASSES)}")
    return curvature_class


def validate_box(roi_box: Sequence[float]) -> list[float]:
    """A box is [x1, y1, x2, y2], finite, with x1 < x2 and y1 < y2."""
    try:
        values = [float(v) for v in roi_box]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"a box is 4 numbers [x1, y1, x2, y2], got {roi_box!r}") from None
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"a box is 4 finite numbers [x1, y1, x2, y2], got {roi_box!r}")
    x1, y1, x2, y2 = values
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"a box needs x1 < x2 and y1 < y2, got {values}")
    return values


def validate_landmarks(landmarks: Any) -> np.ndarray:
    """23 (x, y) points in CSXA order; nan marks a missing point, inf is refused."""
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("landmarks must be 23 [x, y] number pairs") from None
    if points.shape != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must have shape (23, 2), got {points.shape}")
    if np.isinf(points).any():
        raise ValueError("landmarks contain an infinite coordinate")
    return points


def _landmarks_to_json(points: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in points.tolist()]


def _landmarks_from_json(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return np.array([[np.nan if v is None else v for v in row] for row in value], dtype=np.float64)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything written here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- engine


def _use_wal(cursor) -> None:
    """Switch a new database to WAL once (the mode is stored in the file).

    The switch needs an exclusive lock and SQLite answers "database is locked" at once, without waiting on
    busy_timeout, when another process is switching the same new file: retry for up to the busy timeout.
    """
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _create_private(database: str | None) -> None:
    """Create a new SQLite file 0600 before SQLite does (it would make it 0644): it holds password hashes and
    patient ids. SQLite gives its -wal and -shm files the database file's mode."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = os.path.abspath(database)
    if not os.path.exists(path) and os.path.isdir(os.path.dirname(path)):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:  # another process made it first
            pass


# Any number; all CerviCurve writers on one PostgreSQL database take this transaction lock.
PG_WRITE_LOCK = 727_274


def _make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        _create_private(engine.url.database)
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "begin")
        def _on_pg_begin(conn: Connection):
            # Writes one at a time, as BEGIN IMMEDIATE gives SQLite: a save reads the current label and writes the
            # next row in one step, and two annotators saving at once cannot both build on the same old row.
            if conn.get_execution_options().get("cervicurve_write", False):
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")

        return engine
    if engine.dialect.name != "sqlite":
        return engine

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # SQLAlchemy emits BEGIN itself (below), so the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        immediate = conn.get_execution_options().get("cervicurve_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One engine on the annotation database and the transaction discipline every part of it shares (the store,
    accounts, quizzes): writes one at a time (``_write``), reads in a transaction (``_read``)."""

    def __init__(self, url: str | None = None):
        self.url = url or settings.db_url()
        self._engine = _make_engine(self.url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect().execution_options(cervicurve_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn


class AnnotationStore(Database):
    """Images and labels of every dataset in the workspace."""

    def __init__(self, url: str | None = None):
        super().__init__(url)
        self._ensure_schema()

    def _ensure_schema(self) -> None:
        with self._write() as conn:
            metadata.create_all(conn)
            version = conn.execute(select(func.max(schema_info.c.version))).scalar()
            if version is None:
                conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
            elif version < SCHEMA_VERSION:
                # 1 -> 2 added a table and 2 -> 3 the reviews table, which create_all just made; 2 -> 3 also
                # added columns to labels, which create_all leaves alone on an existing table.
                _add_missing_label_columns(conn)
                conn.execute(update(schema_info).values(version=SCHEMA_VERSION))
            elif version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the annotation database {self.url} has schema version {version}, "
                    f"newer than this CerviCurve understands ({SCHEMA_VERSION}); update CerviCurve"
                )

    def schema_version(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.max(schema_info.c.version))).scalar())

    # -- writes

    @contextmanager
    def batch(self) -> Iterator["StoreBatch"]:
        """One transaction for many writes: all of them are kept, or none (an importer's unit)."""
        with self._write() as conn:
            yield StoreBatch(conn)

    def add_image(self, path: str, *, sha256: str, width: int, height: int, patient_id: str,
                  source: str, dataset: str, meta: dict | None = None) -> int:
        """Register an image; the same content (sha256) in the same dataset returns the existing id."""
        with self.batch() as batch:
            return batch.add_image(path, sha256=sha256, width=width, height=height, patient_id=patient_id,
                                   source=source, dataset=dataset, meta=meta)

    def save_label(self, image_id: int, *, annotator: str, curvature_class: str | None = None,
                   roi_box: Sequence[float] | None = None, landmarks: Any = None, note: str | None = None) -> int:
        """Append a label revision; fields left None keep their current value. Returns the new label id."""
        with self.batch() as batch:
            return batch.save_label(image_id, annotator=annotator, curvature_class=curvature_class,
                                    roi_box=roi_box, landmarks=landmarks, note=note)

    def save_reading(self, image_id: int, *, annotator: str, curvature_class: str | None = None,
                     roi_box: Sequence[float] | None = None, landmarks: Any = None, note: str | None = None,
                     seconds: float | None = None, draft: Mapping[str, Any] | None = None,
                     point_moves_px: Sequence[float | None] | None = None) -> int:
        """Append ``annotator``'s complete reading of an image (see the module docstring); returns the label id."""
        with self.batch() as batch:
            return batch.save_reading(image_id, annotator=annotator, curvature_class=curvature_class, roi_box=roi_box,
                                      landmarks=landmarks, note=note, seconds=seconds, draft=draft,
                                      point_moves_px=point_moves_px)

    def review(self, label_id: int, *, reviewer: str, verdict: str, comment: str | None = None,
               curvature_class: str | None = None, roi_box: Sequence[float] | None = None, landmarks: Any = None,
               seconds: float | None = None) -> int:
        """Accept, fix or reject a label row; returns the review id. ``fix`` writes the reviewer's corrected
        copy (the fields given replace the reviewed row's) and accepts that; ``reject`` needs a comment."""
        with self.batch() as batch:
            return batch.review(label_id, reviewer=reviewer, verdict=verdict, comment=comment,
                                curvature_class=curvature_class, roi_box=roi_box, landmarks=landmarks, seconds=seconds)

    def set_splits(self, splits: Mapping[int, str | None]) -> None:
        """Assign train/val/test (or None) to images, all in one transaction; ValueError, writing nothing,
        when a patient would end up in two splits or a frozen test split would change."""
        with self.batch() as batch:
            batch.set_splits(splits)

    def freeze_test(self, dataset: str) -> datetime:
        """Freeze the dataset's test split (see the module docstring); returns when it was frozen."""
        with self.batch() as batch:
            return batch.freeze_test(dataset)

    # -- reads

    def images(self, dataset: str | None = None) -> list[ImageRecord]:
        query = select(images_table).order_by(images_table.c.id)
        if dataset is not None:
            query = query.where(images_table.c.dataset == dataset)
        with self._read() as conn:
            return [_image_record(row) for row in conn.execute(query).mappings()]

    def image(self, image_id: int) -> ImageRecord:
        with self._read() as conn:
            row = conn.execute(select(images_table).where(images_table.c.id == image_id)).mappings().first()
        if row is None:
            raise KeyError(f"no image with id {image_id}")
        return _image_record(row)

    def current_labels(self, dataset: str | None = None, *, labeled_only: bool = False) -> list[LabeledImage]:
        """Every image with its current label (the newest accepted row, else the newest row not rejected;
        label fields None for images without one)."""
        query = select(images_table).order_by(images_table.c.id)
        if dataset is not None:
            query = query.where(images_table.c.dataset == dataset)
        with self._read() as conn:
            images = conn.execute(query).mappings().all()
            chosen = _current_label_ids(conn, dataset)
            rows = {row["image_id"]: row for row in _rows_by_id(conn, list(chosen.values()))}
        found = []
        for image in images:
            row = rows.get(image["id"])
            if row is None and labeled_only:
                continue
            found.append(LabeledImage(
                **vars(_image_record(image)),
                curvature_class=None if row is None else row["curvature_class"],
                roi_box=None if row is None else row["roi_box"],
                landmarks=None if row is None else _landmarks_from_json(row["landmarks"]),
                note=None if row is None else row["note"],
                annotator=None if row is None else row["annotator"],
                labeled_at=None if row is None else _utc(row["created_at"]),
                label_id=None if row is None else row["id"],
            ))
        return found

    def readings(self, dataset: str | None = None, *, image_id: int | None = None) -> list[Reading]:
        """Each annotator's reading of each image (their newest row; a reviewer's fix is not a reading of
        theirs), with its review status; ordered by image, then label id."""
        fixes = select(reviews_table.c.result_label_id).where(reviews_table.c.verdict == "fix",
                                                              reviews_table.c.result_label_id.is_not(None))
        newest = (select(func.max(labels_table.c.id)).where(labels_table.c.id.not_in(fixes))
                  .group_by(labels_table.c.image_id, labels_table.c.annotator))
        query = select(labels_table).where(labels_table.c.id.in_(newest))
        if dataset is not None:
            query = query.join(images_table, images_table.c.id == labels_table.c.image_id).where(
                images_table.c.dataset == dataset)
        if image_id is not None:
            query = query.where(labels_table.c.image_id == int(image_id))
        with self._read() as conn:
            rows = conn.execute(query.order_by(labels_table.c.image_id, labels_table.c.id)).mappings().all()
            latest: dict[int, Any] = {}
            ids = [row["id"] for row in rows]
            for start in range(0, len(ids), _CHUNK):
                for review in conn.execute(select(reviews_table).where(
                        reviews_table.c.label_id.in_(ids[start:start + _CHUNK])).order_by(reviews_table.c.id)):
                    latest[review.label_id] = review
        found = []
        for row in rows:
            review = latest.get(row["id"])
            found.append(Reading(**vars(_revision(row)),
                                 status=None if review is None else review.verdict,
                                 reviewer=None if review is None else review.reviewer,
                                 review_comment=None if review is None else review.comment,
                                 reviewed_at=None if review is None else _utc(review.created_at)))
        return found

    def reviews(self, image_id: int | None = None) -> list[Review]:
        """Review rows, oldest first (of one image, or all)."""
        query = select(reviews_table).order_by(reviews_table.c.id)
        if image_id is not None:
            query = query.where(reviews_table.c.image_id == int(image_id))
        with self._read() as conn:
            return [Review(review_id=r.id, image_id=r.image_id, label_id=r.label_id, reviewer=r.reviewer,
                           created_at=_utc(r.created_at), verdict=r.verdict, comment=r.comment,
                           result_label_id=r.result_label_id) for r in conn.execute(query)]

    def label(self, label_id: int) -> LabelRevision:
        with self._read() as conn:
            row = conn.execute(select(labels_table).where(labels_table.c.id == int(label_id))).mappings().first()
        if row is None:
            raise KeyError(f"no label with id {label_id}")
        return _revision(row)

    def history(self, image_id: int) -> list[LabelRevision]:
        """Every saved revision of an image's label, oldest first."""
        query = select(labels_table).where(labels_table.c.image_id == image_id).order_by(labels_table.c.id)
        with self._read() as conn:
            return [_revision(row) for row in conn.execute(query).mappings()]

    def test_frozen_at(self, dataset: str) -> datetime | None:
        with self._read() as conn:
            return _frozen_at(conn, dataset)

    def patient_splits(self, dataset: str) -> dict[str, str]:
        """Patient -> the split its images are in (patients without a split left out)."""
        with self._read() as conn:
            return _patient_splits(conn, dataset)

    def datasets(self) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(select(images_table.c.dataset).distinct().order_by(images_table.c.dataset)).scalars())

    def summary(self, dataset: str) -> dict:
        """Counts a user checks before training: images, patients, classes, boxes, landmarks, splits."""
        items = self.current_labels(dataset)
        classes = Counter(item.curvature_class for item in items if item.curvature_class)
        splits = Counter(item.split or "unsplit" for item in items)
        return {
            "dataset": dataset,
            "images": len(items),
            "patients": len({item.patient_id for item in items}),
            "classes": {name: classes.get(name, 0) for name in CLASSES},
            "unlabeled": sum(1 for item in items if item.curvature_class is None),
            "boxes": sum(1 for item in items if item.roi_box is not None),
            "landmarks": sum(1 for item in items if item.landmarks is not None),
            "splits": {name: splits.get(name, 0) for name in (*SPLITS, "unsplit")},
            "test_frozen_at": self.test_frozen_at(dataset),
        }

    def count_images(self, dataset: str | None = None) -> int:
        """How many images (of ``dataset``): one ``count(*)``, for pages that only show the number."""
        query = select(func.count()).select_from(images_table)
        if dataset is not None:
            query = query.where(images_table.c.dataset == dataset)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())


class StoreBatch:
    """Writes inside one open transaction (see ``AnnotationStore.batch``)."""

    def __init__(self, conn: Connection):
        self._conn = conn

    def add_image(self, path: str, *, sha256: str, width: int, height: int, patient_id: str,
                  source: str, dataset: str, meta: dict | None = None) -> int:
        if not sha256 or len(sha256) != 64:
            raise ValueError(f"sha256 must be 64 hex characters, got {sha256!r}")
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image size must be positive, got {width} x {height}")
        if not str(patient_id).strip():
            raise ValueError("patient_id must not be empty (patient-grouped splits depend on it)")
        check_dataset_name(dataset)  # every importer writes through here
        existing = self.find_image(dataset, sha256)
        if existing is not None:
            return existing
        # A follow-up film of a known patient joins that patient's split (a test patient's stays in test).
        split = _patient_splits(self._conn, str(dataset), [str(patient_id)]).get(str(patient_id))
        result = self._conn.execute(
            insert(images_table).values(
                sha256=sha256, path=str(path), width=int(width), height=int(height),
                patient_id=str(patient_id), source=str(source), dataset=str(dataset), split=split,
                created_at=_now(), meta=dict(meta or {}),
            )
        )
        return int(result.inserted_primary_key[0])

    def find_image(self, dataset: str, sha256: str) -> int | None:
        """The id of this content in this dataset, or None."""
        found = self._conn.execute(
            select(images_table.c.id).where(images_table.c.dataset == dataset, images_table.c.sha256 == sha256)
        ).scalar()
        return None if found is None else int(found)

    def current(self, image_id: int) -> LabelRevision | None:
        row = self._conn.execute(
            select(labels_table).where(labels_table.c.image_id == image_id).order_by(labels_table.c.id.desc()).limit(1)
        ).mappings().first()
        return None if row is None else _revision(row)

    def save_label(self, image_id: int, *, annotator: str, curvature_class: str | None = None,
                   roi_box: Sequence[float] | None = None, landmarks: Any = None, note: str | None = None) -> int:
        # Validate everything before touching the database, so a bad value writes nothing.
        if not annotator or not str(annotator).strip():
            raise ValueError("annotator must not be empty (history records who saved each label)")
        new_class = None if curvature_class is None else validate_class(curvature_class)
        new_box = None if roi_box is None else validate_box(roi_box)
        new_points = None if landmarks is None else _landmarks_to_json(validate_landmarks(landmarks))
        self._lock_image(image_id)
        current = self.current(image_id)
        if current is not None:
            new_class = current.curvature_class if new_class is None else new_class
            new_box = current.roi_box if new_box is None else new_box
            if new_points is None and current.landmarks is not None:
                new_points = _landmarks_to_json(current.landmarks)
            note = current.note if note is None else note
        result = self._conn.execute(
            insert(labels_table).values(
                image_id=image_id, annotator=str(annotator), created_at=_now(), curvature_class=new_class,
                roi_box=new_box, landmarks=new_points, note=note,
            )
        )
        return int(result.inserted_primary_key[0])

    def _lock_image(self, image_id: int) -> None:
        exists = self._conn.execute(
            select(images_table.c.id).where(images_table.c.id == image_id).with_for_update()
        ).scalar()
        if exists is None:
            raise ValueError(f"no image with id {image_id}")

    def save_reading(self, image_id: int, *, annotator: str, curvature_class: str | None = None,
                     roi_box: Sequence[float] | None = None, landmarks: Any = None, note: str | None = None,
                     seconds: float | None = None, draft: Mapping[str, Any] | None = None,
                     point_moves_px: Sequence[float | None] | None = None) -> int:
        if not annotator or not str(annotator).strip():
            raise ValueError("annotator must not be empty (history records who saved each label)")
        values = {
            "curvature_class": None if curvature_class is None else validate_class(curvature_class),
            "roi_box": None if roi_box is None else validate_box(roi_box),
            "landmarks": None if landmarks is None else _landmarks_to_json(validate_landmarks(landmarks)),
            "note": note or None,
        }
        if not any(values[name] is not None for name in ("curvature_class", "roi_box", "landmarks")):
            raise ValueError("a reading needs a class, a box or landmarks; nothing to save")
        seconds = _validate_seconds(seconds)
        moves = None if point_moves_px is None else _validate_moves(point_moves_px)
        self._lock_image(image_id)
        # What changed is judged against where this annotator left the image (else its current label).
        previous = self._conn.execute(
            select(labels_table).where(labels_table.c.image_id == image_id, labels_table.c.annotator == str(annotator))
            .order_by(labels_table.c.id.desc()).limit(1)).mappings().first()
        before = _revision(previous) if previous is not None else self.current(image_id)
        result = self._conn.execute(insert(labels_table).values(
            image_id=image_id, annotator=str(annotator), created_at=_now(), changes=_changes(before, values),
            seconds=seconds, draft=None if draft is None else _json_ready(dict(draft)), point_moves_px=moves,
            **values))
        return int(result.inserted_primary_key[0])

    def review(self, label_id: int, *, reviewer: str, verdict: str, comment: str | None = None,
               curvature_class: str | None = None, roi_box: Sequence[float] | None = None, landmarks: Any = None,
               seconds: float | None = None) -> int:
        if not reviewer or not str(reviewer).strip():
            raise ValueError("reviewer must not be empty (reviews record who decided)")
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; expected one of {', '.join(VERDICTS)}")
        if verdict == "reject" and not (comment and comment.strip()):
            raise ValueError("a rejection needs a comment: the annotator reads it to fix the label")
        fixed = {"curvature_class": curvature_class, "roi_box": roi_box, "landmarks": landmarks}
        if verdict == "fix" and all(value is None for value in fixed.values()):
            raise ValueError("a fix needs the corrected class, box or landmarks")
        row = self._conn.execute(select(labels_table).where(labels_table.c.id == int(label_id))).mappings().first()
        if row is None:
            raise ValueError(f"no label with id {label_id}")
        reviewed = _revision(row)
        result_id: int | None = int(label_id) if verdict == "accept" else None
        if verdict == "fix":
            result_id = self.save_reading(
                reviewed.image_id, annotator=reviewer,
                curvature_class=reviewed.curvature_class if curvature_class is None else curvature_class,
                roi_box=reviewed.roi_box if roi_box is None else roi_box,
                landmarks=reviewed.landmarks if landmarks is None else landmarks,
                note=reviewed.note, seconds=seconds)
        else:
            self._lock_image(reviewed.image_id)
        result = self._conn.execute(insert(reviews_table).values(
            image_id=reviewed.image_id, label_id=int(label_id), reviewer=str(reviewer), created_at=_now(),
            verdict=verdict, comment=(comment or "").strip() or None, result_label_id=result_id))
        return int(result.inserted_primary_key[0])

    def set_splits(self, splits: Mapping[int, str | None]) -> None:
        for image_id, split in splits.items():
            if split is not None and split not in SPLITS:
                raise ValueError(f"unknown split {split!r} for image {image_id}; expected one of {', '.join(SPLITS)}")
        ids = [int(image_id) for image_id in splits]
        before = {row.id: row for row in self._conn.execute(
            select(images_table.c.id, images_table.c.dataset, images_table.c.patient_id, images_table.c.split)
            .where(images_table.c.id.in_(ids)))}
        missing = [image_id for image_id in ids if image_id not in before]
        if missing:
            raise ValueError(f"no image with id {missing[0]}")
        for dataset in {row.dataset for row in before.values()}:
            if _frozen_at(self._conn, dataset) is None:
                continue
            test_patients = {p for p, s in _patient_splits(self._conn, dataset).items() if s == "test"}
            for image_id, split in splits.items():
                row = before[int(image_id)]
                if row.dataset != dataset or (split == "test") == (row.split == "test"):
                    continue
                if row.split == "test" or row.patient_id not in test_patients:
                    raise ValueError(f"the test split of dataset {dataset!r} is frozen: image {image_id} of patient "
                                     f"{row.patient_id!r} cannot move {'out of' if row.split == 'test' else 'into'} it")
        for image_id, split in splits.items():
            self._conn.execute(update(images_table).where(images_table.c.id == int(image_id)).values(split=split))
        for dataset in {row.dataset for row in before.values()}:
            conflicts = patient_split_conflicts(self._conn, dataset)
            if conflicts:  # raised inside the transaction: the updates above are rolled back
                patient, found = next(iter(conflicts.items()))
                raise ValueError(f"patient {patient!r} of dataset {dataset!r} would be in {' and '.join(found)}"
                                 + (f" (and {len(conflicts) - 1} more patients)" if len(conflicts) > 1 else "")
                                 + "; all images of a patient share one split")

    def freeze_test(self, dataset: str) -> datetime:
        frozen = _frozen_at(self._conn, dataset)
        if frozen is not None:
            return frozen
        if "test" not in _patient_splits(self._conn, dataset).values():
            raise ValueError(f"dataset {dataset!r} has no test split to freeze; make the splits first")
        now = _now()
        if self._conn.execute(select(datasets_table.c.dataset).where(datasets_table.c.dataset == dataset)).first():
            self._conn.execute(update(datasets_table).where(datasets_table.c.dataset == dataset)
                               .values(test_frozen_at=now))
        else:
            self._conn.execute(insert(datasets_table).values(dataset=dataset, test_frozen_at=now))
        return now


def _frozen_at(conn: Connection, dataset: str) -> datetime | None:
    return _utc(conn.execute(select(datasets_table.c.test_frozen_at)
                             .where(datasets_table.c.dataset == dataset)).scalar())


def _patient_splits(conn: Connection, dataset: str, patients: Sequence[str] | None = None) -> dict[str, str]:
    query = (select(images_table.c.patient_id, func.min(images_table.c.split))
             .where(images_table.c.dataset == dataset, images_table.c.split.is_not(None))
             .group_by(images_table.c.patient_id))
    if patients is not None:
        query = query.where(images_table.c.patient_id.in_(list(patients)))
    return {patient: split for patient, split in conn.execute(query)}


def patient_split_conflicts(conn: Connection, dataset: str) -> dict[str, list[str]]:
    """Patients of ``dataset`` whose images are in more than one split -> those splits (SPLITS order)."""
    query = (select(images_table.c.patient_id, images_table.c.split).distinct()
             .where(images_table.c.dataset == dataset, images_table.c.split.is_not(None)))
    found: dict[str, set] = {}
    for patient, split in conn.execute(query):
        found.setdefault(patient, set()).add(split)
    return {patient: [s for s in SPLITS if s in splits] for patient, splits in sorted(found.items()) if len(splits) > 1}


_CHUNK = 500  # ids per IN (...) list: well under SQLite's bound-parameter limit


def _add_missing_label_columns(conn: Connection) -> None:
    """Schema 2 -> 3 in place: ALTER TABLE adds the provenance columns (nullable, so old rows read as None)."""
    present = {column["name"] for column in inspect(conn).get_columns("labels")}
    for name in _V3_LABEL_COLUMNS:
        if name not in present:
            kind = labels_table.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE labels ADD COLUMN {name} {kind}")


def _current_label_ids(conn: Connection, dataset: str | None) -> dict[int, int]:
    """Image -> its current label id: the newest accepted row, else the newest row not rejected.

    A row's status is the verdict of its newest review; an accepted row is the result of an accept or fix
    whose reviewed row still has that verdict and which was not itself rejected later."""
    labels_query = select(labels_table.c.id, labels_table.c.image_id)
    reviews_query = select(reviews_table.c.image_id, reviews_table.c.label_id, reviews_table.c.verdict,
                           reviews_table.c.result_label_id).order_by(reviews_table.c.id)
    if dataset is not None:
        in_dataset = select(images_table.c.id).where(images_table.c.dataset == dataset)
        labels_query = labels_query.where(labels_table.c.image_id.in_(in_dataset))
        reviews_query = reviews_query.where(reviews_table.c.image_id.in_(in_dataset))
    newest_review = {review.label_id: review for review in conn.execute(reviews_query)}
    rejected = {label_id for label_id, review in newest_review.items() if review.verdict == "reject"}
    chosen: dict[int, int] = {}
    for review in newest_review.values():
        result = review.result_label_id
        if review.verdict in ("accept", "fix") and result is not None and result not in rejected:
            chosen[review.image_id] = max(chosen.get(review.image_id, 0), result)
    newest: dict[int, int] = {}
    for label_id, image_id in conn.execute(labels_query):
        if label_id not in rejected:
            newest[image_id] = max(newest.get(image_id, 0), label_id)
    return {image_id: chosen.get(image_id, label_id) for image_id, label_id in newest.items()} | chosen


def _rows_by_id(conn: Connection, ids: Sequence[int]) -> list[Mapping[str, Any]]:
    rows = []
    for start in range(0, len(ids), _CHUNK):
        rows += conn.execute(select(labels_table).where(labels_table.c.id.in_(ids[start:start + _CHUNK]))).mappings().all()
    return rows


def _validate_seconds(seconds: float | None) -> float | None:
    if seconds is None:
        return None
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a number, got {seconds!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    return value


def _validate_moves(moves: Sequence[float | None]) -> list[float | None]:
    values = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in moves]
    if len(values) != N_LANDMARKS or any(v is not None and not (math.isfinite(v) and v >= 0) for v in values):
        raise ValueError("point_moves_px must be 23 distances >= 0 (None where a point is missing)")
    return values


def _json_ready(value: Any) -> Any:
    """Arrays and numpy numbers as plain JSON (NaN as null), for the draft column."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _same_points(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    left, right = _landmarks_from_json(a), _landmarks_from_json(b)
    return bool(np.array_equal(np.isnan(left), np.isnan(right))
                and np.allclose(np.nan_to_num(left), np.nan_to_num(right), atol=1e-6))


def _changes(before: LabelRevision | None, values: Mapping[str, Any]) -> list[str]:
    if before is None:
        return [name for name in READING_FIELDS if values[name] is not None]
    old = {"curvature_class": before.curvature_class, "roi_box": before.roi_box, "note": before.note,
           "landmarks": None if before.landmarks is None else _landmarks_to_json(before.landmarks)}
    changed = []
    for name in READING_FIELDS:
        if name == "landmarks":
            same = _same_points(old[name], values[name])
        elif name == "roi_box" and old[name] is not None and values[name] is not None:
            same = bool(np.allclose(old[name], values[name], atol=1e-6))
        else:
            same = old[name] == values[name]
        if not same:
            changed.append(name)
    return changed


def _image_record(row: Mapping[str, Any]) -> ImageRecord:
    return ImageRecord(
        image_id=row["id"], sha256=row["sha256"], path=row["path"], width=row["width"], height=row["height"],
        patient_id=row["patient_id"], source=row["source"], dataset=row["dataset"], split=row["split"],
        created_at=_utc(row["created_at"]), meta=row["meta"] or {},
    )


def _revision(row: Mapping[str, Any]) -> LabelRevision:
    return LabelRevision(
        label_id=row["id"], image_id=row["image_id"], annotator=row["annotator"], created_at=_utc(row["created_at"]),
        curvature_class=row["curvature_class"], roi_box=row["roi_box"],
        landmarks=_landmarks_from_json(row["landmarks"]), note=row["note"], changes=row.get("changes"),
        seconds=row.get("seconds"), draft=row.get("draft"), point_moves_px=row.get("point_moves_px"),
    )
