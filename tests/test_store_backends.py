"""The annotation store on both databases a team can run: the workspace's SQLite file and a PostgreSQL server
started by the tests (psycopg 3). Same behaviour, same rules, and concurrent annotator processes lose nothing."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.data.store import AnnotationStore
from tests.helpers.wait import wait_for_files

ROOT = Path(__file__).resolve().parents[1]
SHA = "{:064x}"


def test_schema_history_and_splits_behave_the_same(database):
    with AnnotationStore(database) as store:
        first = store.add_image("a.png", sha256=SHA.format(1), width=64, height=64, patient_id="P1", source="t",
                                dataset="d")
        second = store.add_image("b.png", sha256=SHA.format(2), width=64, height=64, patient_id="P2", source="t",
                                 dataset="d")
        store.save_label(first, annotator="ana", curvature_class="normal")
        landmarks = np.full((23, 2), 10.0)
        landmarks[22] = np.nan  # C7 hidden: stored as missing
        store.save_label(first, annotator="ben", roi_box=[1, 2, 30, 40], landmarks=landmarks)
        history = store.history(first)
        assert [r.annotator for r in history] == ["ana", "ben"]  # append-only
        assert history[-1].curvature_class == "normal" and history[-1].roi_box == [1.0, 2.0, 30.0, 40.0]
        assert np.isnan(history[-1].landmarks[22]).all() and history[-1].landmarks[0, 0] == 10.0
        store.set_splits({first: "train", second: "test"})
        third = store.add_image("c.png", sha256=SHA.format(3), width=64, height=64, patient_id="P2", source="t",
                                dataset="d")
        assert store.image(third).split == "test"  # a new film of a known patient joins its split
        with pytest.raises(ValueError):
            store.set_splits({third: "train"})  # one patient, two splits: refused
        assert store.summary("d")["splits"] == {"train": 1, "val": 0, "test": 2, "unsplit": 0}
        assert store.count_images("d") == 3


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from core.data.store import AnnotationStore
    from tests.helpers.wait import wait_for
    url, who, go, saves = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = AnnotationStore(url)
    ids = [image.image_id for image in store.images("team")]
    (go.parent / f"ready-{{who}}").touch()
    wait_for(go.exists, timeout=600, every=0.01)
    for i in range(saves):
        store.save_label(ids[i % len(ids)], annotator=who, curvature_class=("normal", "straightened", "reversed")[i % 3],
                         roi_box=[1, 2, 10 + i, 20 + i], note=f"{{who}}-{{i}}")
    """
)


@pytest.mark.slow
def test_four_annotator_processes_saving_at_once_lose_nothing(database, tmp_path):
    annotators, saves = ("ana", "ben", "cai", "dee"), 250
    with AnnotationStore(database) as store:
        for n in range(10):
            store.add_image(f"{n}.png", sha256=SHA.format(100 + n), width=64, height=64, patient_id=f"P{n}",
                            source="t", dataset="team")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(script), database, who, str(go), str(saves)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in annotators]
    wait_for_files([tmp_path / f"ready-{who}" for who in annotators], workers)  # every one started: release all
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err

    with AnnotationStore(database) as store:
        rows = [r for image in store.images("team") for r in store.history(image.image_id)]
        assert len(rows) == len(annotators) * saves
        assert {r.note for r in rows} == {f"{who}-{i}" for who in annotators for i in range(saves)}
        for r in rows:  # every reading as its annotator wrote it
            who, i = r.note.split("-")
            assert r.annotator == who and r.roi_box == [1.0, 2.0, 10.0 + int(i), 20.0 + int(i)]
