"""The annotation store on a real SQLite file and on a PostgreSQL database of its own (the ``database`` fixture):
append-only history, carry-forward, validation, concurrency."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select, text

from core import settings
from core.data.store import AnnotationStore, images_table, labels_table
from tests.helpers.wait import wait_for_files

pytestmark = pytest.mark.usefixtures("database")  # every test on SQLite, then on PostgreSQL

ROOT = Path(__file__).resolve().parents[1]


def _sha(n: int) -> str:
    return f"{n:064x}"


def _add(store: AnnotationStore, n: int, dataset: str = "ds", patient: str | None = None) -> int:
    return store.add_image(f"images/{n}.png", sha256=_sha(n), width=100, height=80,
                           patient_id=patient or f"P{n}", source=f"src/{n}.png", dataset=dataset)


def _landmarks(offset: float = 0.0) -> np.ndarray:
    return np.arange(46, dtype=float).reshape(23, 2) + offset


def _row_counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = (conn.execute(select(func.count()).select_from(images_table)).scalar(),
                  conn.execute(select(func.count()).select_from(labels_table)).scalar())
    engine.dispose()
    return counts


# SQLite only: the WAL and busy-timeout pragmas of the workspace's file
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_file_is_wal_with_busy_timeout_and_versioned(workspace):
    store = AnnotationStore()
    assert store.url.startswith("sqlite:///") and str(workspace) in store.url
    assert store.schema_version() == 3
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    store.close()
    # Reopening an existing file keeps the data and the version row single.
    again = AnnotationStore()
    with again._engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_info")).scalar() == 1


def test_newer_schema_is_refused(workspace):
    AnnotationStore().close()
    engine = create_engine(settings.db_url())
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = 99"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer"):
        AnnotationStore()


def test_same_content_in_same_dataset_is_one_image(workspace):
    store = AnnotationStore()
    first = _add(store, 1)
    assert _add(store, 1) == first
    other = _add(store, 1, dataset="other")
    assert other != first
    assert len(store.images("ds")) == 1 and len(store.images()) == 2
    assert store.datasets() == ["ds", "other"]


def test_history_is_append_only_and_carries_fields_forward(workspace):
    store = AnnotationStore()
    image_id = _add(store, 1)
    store.save_label(image_id, annotator="ana", curvature_class="normal", note="first look")
    store.save_label(image_id, annotator="ben", roi_box=[10, 5, 60, 70])
    store.save_label(image_id, annotator="ana", landmarks=_landmarks())
    store.save_label(image_id, annotator="cy", curvature_class="reversed")

    revisions = store.history(image_id)
    assert [r.annotator for r in revisions] == ["ana", "ben", "ana", "cy"]
    assert [r.label_id for r in revisions] == sorted(r.label_id for r in revisions)
    assert [r.curvature_class for r in revisions] == ["normal", "normal", "normal", "reversed"]
    assert revisions[0].roi_box is None and revisions[1].roi_box == [10.0, 5.0, 60.0, 70.0]
    assert revisions[1].landmarks is None
    np.testing.assert_array_equal(revisions[3].landmarks, _landmarks())
    assert all(r.note == "first look" for r in revisions)
    assert revisions[0].created_at <= revisions[-1].created_at

    (current,) = store.current_labels("ds")
    assert current.curvature_class == "reversed" and current.class_index == 2
    assert current.roi_box == [10.0, 5.0, 60.0, 70.0]
    assert current.annotator == "cy" and current.label_id == revisions[-1].label_id


def test_missing_landmark_survives_as_nan(workspace):
    store = AnnotationStore()
    image_id = _add(store, 1)
    points = _landmarks()
    points[22] = np.nan  # C7 bottom right hidden by the shoulders
    store.save_label(image_id, annotator="ana", landmarks=points)
    (current,) = store.current_labels()
    assert np.isnan(current.landmarks[22]).all() and not np.isnan(current.landmarks[:22]).any()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"curvature_class": "sigmoid"}, "unknown curvature class"),
        ({"roi_box": [10, 5, 60]}, "4 finite numbers"),
        ({"roi_box": [60, 5, 10, 70]}, "x1 < x2"),
        ({"roi_box": [10, 70, 60, 5]}, "y1 < y2"),
        ({"roi_box": [10, 5, float("nan"), 70]}, "finite"),
        ({"roi_box": "a box"}, "4 numbers"),
        ({"landmarks": np.zeros((22, 2))}, r"shape \(23, 2\)"),
        ({"landmarks": [["a", "b"]] * 23}, "23 \\[x, y\\]"),
        ({"curvature_class": "normal", "annotator": " "}, "annotator"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_written(workspace, fields, message):
    store = AnnotationStore()
    image_id = _add(store, 1)
    store.save_label(image_id, annotator="ana", curvature_class="normal")
    kwargs = {"annotator": "ben", "curvature_class": "straightened", **fields}
    with pytest.raises(ValueError, match=message):
        store.save_label(image_id, **kwargs)
    assert len(store.history(image_id)) == 1
    assert store.current_labels()[0].curvature_class == "normal"


def test_label_for_unknown_image_is_refused(workspace):
    store = AnnotationStore()
    with pytest.raises(ValueError, match="no image with id 42"):
        store.save_label(42, annotator="ana", curvature_class="normal")
    assert _row_counts(store.url) == (0, 0)


def test_batch_is_all_or_nothing(workspace):
    store = AnnotationStore()
    _add(store, 1)
    with pytest.raises(ValueError):
        with store.batch() as batch:
            new_id = batch.add_image("images/2.png", sha256=_sha(2), width=5, height=5, patient_id="P2",
                                     source="s", dataset="ds")
            batch.save_label(new_id, annotator="import", curvature_class="normal")
            batch.save_label(new_id, annotator="import", curvature_class="kyphosis")
    assert _row_counts(store.url) == (1, 0)


def test_splits_and_summary(workspace):
    store = AnnotationStore()
    ids = [_add(store, n, patient=f"P{n // 2}") for n in range(6)]
    for image_id, cls in zip(ids, ["normal", "normal", "straightened", "reversed", "reversed", None]):
        if cls:
            store.save_label(image_id, annotator="ana", curvature_class=cls, roi_box=[1, 1, 9, 9])
    store.save_label(ids[0], annotator="ana", landmarks=_landmarks())
    store.set_splits({ids[0]: "train", ids[1]: "train", ids[2]: "val", ids[3]: "val", ids[4]: "test"})
    with pytest.raises(ValueError, match="unknown split"):
        store.set_splits({ids[4]: "holdout", ids[5]: "train"})
    with pytest.raises(ValueError, match="no image with id 999"):
        store.set_splits({ids[5]: "train", 999: "train"})
    with pytest.raises(ValueError, match="patient 'P2' of dataset 'ds' would be in train and test"):
        store.set_splits({ids[5]: "train"})
    assert store.images()[5].split is None  # no failed call changed anything

    assert store.summary("ds") == {
        "dataset": "ds", "images": 6, "patients": 3,
        "classes": {"normal": 2, "straightened": 1, "reversed": 2}, "unlabeled": 1,
        "boxes": 5, "landmarks": 1,
        "splits": {"train": 2, "val": 2, "test": 1, "unsplit": 1}, "test_frozen_at": None,
    }
    assert len(store.current_labels("ds", labeled_only=True)) == 5


def test_new_film_of_a_known_patient_joins_its_split_and_frozen_test_holds(workspace):
    store = AnnotationStore()
    first, other = _add(store, 0, patient="P0"), _add(store, 1, patient="P1")
    with pytest.raises(ValueError, match="no test split to freeze"):
        store.freeze_test("ds")
    store.set_splits({first: "test", other: "train"})
    follow_up = _add(store, 2, patient="P0")
    assert store.image(follow_up).split == "test" and store.patient_splits("ds") == {"P0": "test", "P1": "train"}

    frozen = store.freeze_test("ds")
    assert store.freeze_test("ds") == frozen == store.test_frozen_at("ds")
    with pytest.raises(ValueError, match="frozen: image .* cannot move out of it"):
        store.set_splits({first: "train", follow_up: "train"})
    with pytest.raises(ValueError, match="frozen: image .* of patient 'P1' cannot move into it"):
        store.set_splits({other: "test"})
    store.set_splits({other: "val"})  # train and val stay free
    assert [i.split for i in store.images("ds")] == ["test", "val", "test"]
    assert _add(store, 3, patient="P9", dataset="elsewhere") and store.test_frozen_at("elsewhere") is None


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from core.data.store import AnnotationStore
    from tests.helpers.wait import wait_for
    url, who, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    (go.parent / f"ready-{{who}}").touch()
    wait_for(go.exists, timeout=180, every=0.01)
    store = AnnotationStore(url)   # both processes may create the schema at the same moment
    ids = [store.add_image(f"images/{{n}}.png", sha256=f"{{n:064x}}", width=64, height=64,
                           patient_id=f"P{{n}}", source="worker", dataset="shared") for n in range(10)]
    for i in range(200):
        image_id = ids[i % len(ids)]
        if who == "ana":
            store.save_label(image_id, annotator=who, curvature_class=("normal", "reversed")[i % 2], note=f"ana-{{i}}")
        else:
            store.save_label(image_id, annotator=who, roi_box=[1, 2, 10 + i, 20 + i], note=f"ben-{{i}}")
    """
)


@pytest.mark.slow
def test_two_processes_saving_at_once_lose_nothing(workspace, tmp_path):
    url = settings.db_url()  # not created yet: both workers may create the schema at once
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(script), url, who, str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for who in ("ana", "ben")]
    wait_for_files([tmp_path / f"ready-{who}" for who in ("ana", "ben")], workers)  # both started: release together
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err

    store = AnnotationStore(url)
    assert _row_counts(url) == (10, 400)
    notes = {r.note for image in store.images() for r in store.history(image.image_id)}
    assert notes == {f"ana-{i}" for i in range(200)} | {f"ben-{i}" for i in range(200)}
    for image in store.images():
        revisions = store.history(image.image_id)
        assert len(revisions) == 40
        # Each save read the current label under the write lock: once both annotators have saved,
        # every later row carries both the class and the box, whoever wrote it.
        first_both = max(next(k for k, r in enumerate(revisions) if r.annotator == who) for who in ("ana", "ben"))
        assert all(r.curvature_class and r.roi_box for r in revisions[first_both:])
        last_ana = [r for r in revisions if r.annotator == "ana"][-1]
        last_ben = [r for r in revisions if r.annotator == "ben"][-1]
        current = next(c for c in store.current_labels("shared") if c.image_id == image.image_id)
        assert current.curvature_class == last_ana.curvature_class
        assert current.roi_box == last_ben.roi_box


# SQLite only: a file an older CerviCurve wrote, built with SQLite's own DDL
@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_a_schema_2_file_is_upgraded_in_place_keeping_its_history(workspace):
    """A file written before readings and reviews (schema 2): the new columns and table are added, old rows read
    back with no provenance, and new readings and reviews go in beside them."""
    path = workspace / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        for statement in (
            "CREATE TABLE schema_info (version INTEGER NOT NULL)",
            "INSERT INTO schema_info VALUES (2)",
            "CREATE TABLE images (id INTEGER PRIMARY KEY, sha256 VARCHAR(64) NOT NULL, path TEXT NOT NULL, "
            "width INTEGER NOT NULL, height INTEGER NOT NULL, patient_id VARCHAR(200) NOT NULL, source TEXT NOT NULL, "
            "dataset VARCHAR(200) NOT NULL, split VARCHAR(10), created_at DATETIME NOT NULL, meta JSON NOT NULL, "
            "CONSTRAINT uq_image_per_dataset UNIQUE (dataset, sha256))",
            "CREATE TABLE datasets (dataset VARCHAR(200) PRIMARY KEY, test_frozen_at DATETIME)",
            "CREATE TABLE labels (id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id), "
            "annotator VARCHAR(200) NOT NULL, created_at DATETIME NOT NULL, curvature_class VARCHAR(20), "
            "roi_box JSON, landmarks JSON, note TEXT)",
            f"INSERT INTO images VALUES (1, '{_sha(1)}', 'images/1.png', 100, 80, 'P1', 'src', 'ds', NULL, "
            "'2026-01-01 00:00:00', '{}')",
            "INSERT INTO labels VALUES (1, 1, 'old', '2026-01-01 00:00:00', 'normal', '[1, 2, 30, 40]', NULL, 'kept')",
        ):
            conn.exec_driver_sql(statement)
    engine.dispose()

    store = AnnotationStore(f"sqlite:///{path}")
    assert store.schema_version() == 3
    (old,) = store.history(1)
    assert (old.annotator, old.curvature_class, old.note, old.seconds, old.draft) == ("old", "normal", "kept", None, None)
    new = store.save_reading(1, annotator="ana", curvature_class="reversed", roi_box=[1, 2, 30, 40], seconds=9.5,
                             draft={"models": {"classifier": "x"}, "landmarks": np.full((23, 2), np.nan)})
    store.review(new, reviewer="rev", verdict="accept")
    assert [r.annotator for r in store.readings("ds")] == ["old", "ana"]
    (current,) = store.current_labels("ds")
    assert current.label_id == new and current.curvature_class == "reversed"
    assert store.label(new).draft["landmarks"][0] == [None, None]
    assert store.label(new).changes == ["curvature_class", "note"]  # against the label before ana's first reading
    store.close()
    again = AnnotationStore(f"sqlite:///{path}")  # a second open finds it current and changes nothing
    assert again.schema_version() == 3 and len(again.history(1)) == 2
    again.close()
