"""The labeling engine on a real SQLite file and on PostgreSQL (the ``database`` fixture): queue filters,
active-learning order, readings, review, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.data import labels
from core.data.store import AnnotationStore
from tests.helpers.films import unlabeled_phantoms
from tests.helpers.wait import wait_for_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def films(database, workspace):
    cases = unlabeled_phantoms(workspace, 6)
    store = AnnotationStore()
    ids = [image.image_id for image in store.images("films")]
    yield store, ids, cases
    store.close()


def test_queue_filters_follow_who_read_what(films):
    store, ids, cases = films
    assert [i.image_id for i in labels.queue("films", "ana", store=store)] == ids  # all unlabeled
    labels.save(ids[0], annotator="ana", curvature_class="normal", roi_box=cases[0].roi_box, landmarks=None, store=store)
    labels.save(ids[1], annotator="ben", curvature_class="reversed", roi_box=None, landmarks=None, store=store)
    labels.save(ids[2], annotator="ana", curvature_class="normal", roi_box=None, landmarks=None, store=store)
    labels.save(ids[2], annotator="ben", curvature_class="reversed", roi_box=None, landmarks=None, store=store)

    def queue(who, name, **kw):
        return [i.image_id for i in labels.queue("films", who, name, store=store, **kw)]

    assert queue("ana", "unlabeled") == ids[3:]
    assert queue("ana", "mine") == [ids[0], ids[2]]
    assert queue("ana", "others") == [ids[1]]
    assert queue("cat", "others") == ids[:3]
    assert queue("ana", "disagreements") == [ids[2]]
    # active learning: most uncertain first, unscored last
    assert queue("ana", "unlabeled", scores={ids[4]: 0.9, ids[5]: 0.2}) == [ids[4], ids[5], ids[3]]
    done = labels.progress("films", store=store)
    assert (done.labeled, done.total, done.boxes) == (3, 6, 1)
    assert done.per_class == {"normal": 1, "straightened": 0, "reversed": 2}  # image 2: ben's is the newest
    with pytest.raises(ValueError, match="unknown queue filter"):
        labels.queue("films", "ana", "mystery", store=store)
    with pytest.raises(ValueError, match="annotator"):
        labels.queue("films", " ", store=store)


def test_a_draft_reading_records_its_origin_and_each_point_move(films):
    store, ids, cases = films
    truth = cases[0].landmarks
    draft = {"models": {"classifier": "promoted/classify/best.pt"}, "curvature_class": "normal",
             "roi_box": cases[0].roi_box, "landmarks": (truth + [3.0, 4.0]).tolist()}
    saved = truth.copy()
    saved[22] = np.nan  # C7 marked not visible
    label_id = labels.save(ids[0], annotator="ana", curvature_class="normal", roi_box=cases[0].roi_box,
                           landmarks=saved, draft=draft, seconds=12.5, store=store)
    (reading,) = store.readings("films")
    assert reading.label_id == label_id and reading.from_draft and reading.seconds == 12.5
    assert reading.point_moves_px[:22] == [pytest.approx(5.0)] * 22 and reading.point_moves_px[22] is None
    assert reading.draft["models"]["classifier"] == "promoted/classify/best.pt"
    assert set(reading.changes) == {"curvature_class", "roi_box", "landmarks"}
    assert np.isnan(reading.landmarks[22]).all()
    # a second save by the same annotator: one more row, and only what changed is listed
    labels.save(ids[0], annotator="ana", curvature_class="straightened", roi_box=cases[0].roi_box, landmarks=saved,
                store=store)
    assert [r.changes for r in store.history(ids[0])][-1] == ["curvature_class"]
    assert len(store.history(ids[0])) == 2


def test_review_accept_fix_reject_decide_the_current_label(films):
    store, ids, cases = films
    ana = labels.save(ids[0], annotator="ana", curvature_class="normal", roi_box=None, landmarks=None, store=store)
    ben = labels.save(ids[0], annotator="ben", curvature_class="reversed", roi_box=None, landmarks=None, store=store)
    current = {i.image_id: i for i in store.current_labels("films")}
    assert current[ids[0]].label_id == ben  # unreviewed: the newest
    labels.review(ana, reviewer="rev", verdict="accept", store=store)
    current = {i.image_id: i for i in store.current_labels("films")}
    assert current[ids[0]].label_id == ana  # reviewed beats newer
    # reject needs a comment; a rejected reading goes back to its annotator's queue
    with pytest.raises(ValueError, match="comment"):
        labels.review(ben, reviewer="rev", verdict="reject", store=store)
    labels.review(ben, reviewer="rev", verdict="reject", comment="C2 endplate is C3's", store=store)
    (item,) = labels.queue("films", "ben", "rejected", store=store)
    assert item.image_id == ids[0] and "C2 endplate is C3's" in item.rejection
    # fix: the reviewer's corrected copy is written and accepted; it is not counted as the reviewer's own reading
    other = labels.save(ids[1], annotator="ana", curvature_class="normal", roi_box=cases[1].roi_box, landmarks=None,
                        store=store)
    labels.review(other, reviewer="rev", verdict="fix", curvature_class="straightened", store=store)
    current = {i.image_id: i for i in store.current_labels("films")}
    assert current[ids[1]].curvature_class == "straightened" and current[ids[1]].annotator == "rev"
    assert current[ids[1]].roi_box == cases[1].roi_box  # fields not fixed come from the reviewed reading
    assert {r.annotator for r in store.readings("films", image_id=ids[1])} == {"ana"}
    assert [r.verdict for r in store.reviews()] == ["accept", "reject", "fix"]
    # an image whose only reading was rejected has no current label
    only = labels.save(ids[2], annotator="ana", curvature_class="normal", roi_box=None, landmarks=None, store=store)
    labels.review(only, reviewer="rev", verdict="reject", comment="wrong film", store=store)
    assert {i.image_id: i for i in store.current_labels("films")}[ids[2]].label_id is None
    assert len(store.history(ids[2])) == 1  # nothing deleted


def test_rule_check_flags_a_contradicting_class(films):
    _, _, cases = films
    reversed_case = cases[2]  # CLASSES[2 % 3]
    check = labels.rule_check("normal", reversed_case.landmarks)
    assert check.rule_class == "reversed" and check.contradicts and "contradicts" in check.message
    assert not labels.rule_check("reversed", reversed_case.landmarks).contradicts
    partial = reversed_case.landmarks.copy()
    partial[5:9] = np.nan  # C4 not placed yet: nothing to measure, nothing flagged
    assert labels.rule_check("normal", partial) == labels.RuleCheck(None, None, None, False, None)


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from core.data import labels
    from core.data.store import AnnotationStore
    from tests.helpers.wait import wait_for
    url, who, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    store = AnnotationStore(url)
    ids = [image.image_id for image in store.images("films")]
    (go.parent / f"ready-{{who}}").touch()
    wait_for(go.exists, timeout=180, every=0.01)
    for round in range(5):
        for n, image_id in enumerate(ids):
            name = ("normal", "straightened", "reversed")[(n + (who == "ben") * (n % 2)) % 3]
            labels.save(image_id, annotator=who, curvature_class=name, roi_box=[1, 2, 30 + n, 40 + n],
                        landmarks=None, seconds=round + 1, store=store)
    """
)


@pytest.mark.slow
def test_two_sessions_saving_the_same_images_at_once_keep_both_readings(films, tmp_path):
    store, ids, _ = films
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    go = tmp_path / "go"
    workers = [subprocess.Popen([sys.executable, str(script), store.url, who, str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in ("ana", "ben")]
    wait_for_files([tmp_path / f"ready-{who}" for who in ("ana", "ben")], workers)  # both started, then released
    go.touch()
    for worker in workers:
        _, err = worker.communicate(timeout=180)
        assert worker.returncode == 0, err
    readings = store.readings("films")
    assert len(readings) == 2 * len(ids)  # each annotator's own reading of each image
    assert sum(len(store.history(i)) for i in ids) == 2 * 5 * len(ids)
    from core.evaluation.agreement import team_report

    report = team_report("films", store=store)
    assert report.agreement.images == len(ids) and report.agreement.kappa_n == len(ids)
    # ben differs from ana on the odd images only
    assert {d.image_id for d in report.disagreements} == {ids[n] for n in range(len(ids)) if n % 2}
    assert all(s.median_seconds == 5 for s in report.annotators)  # each reading is the last round's save


def test_labels_command(films, capsys):
    from core.cli import main

    store, ids, cases = films
    assert main(["labels", "save", str(ids[0]), "--annotator", "ana", "--class", "normal",
                 "--box", ",".join(str(v) for v in cases[0].roi_box)]) == 0
    assert main(["labels", "save", str(ids[0]), "--annotator", "ben", "--class", "reversed"]) == 0
    assert main(["labels", "queue", "--dataset", "films", "--annotator", "ana", "--filter", "disagreements",
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.strip().splitlines()[-1])["image_id"] == ids[0]
    first = store.readings("films")[0].label_id
    assert main(["labels", "review", str(first), "--reviewer", "rev", "--verdict", "reject"]) == 2
    assert "comment" in capsys.readouterr().err
    assert main(["labels", "agreement", "--dataset", "films"]) == 0
    assert "disagreements: 1" in capsys.readouterr().out
    assert main(["labels", "progress", "--dataset", "films"]) == 0
    assert "1 / 6 labeled" in capsys.readouterr().out
    assert main(["labels", "save", "999", "--annotator", "ana", "--class", "normal"]) == 2
    assert "no image with id 999" in capsys.readouterr().err
    assert main(["labels", "save", str(ids[1]), "--annotator", "ana", "--box", "1,2"]) == 2
    assert main(["labels", "draft", str(ids[1])]) == 2
    assert "nothing is promoted" in capsys.readouterr().err


def test_exports_of_the_labels(films, tmp_path):
    from core.data.labels import export

    store, ids, cases = films
    for image_id, case in zip(ids, cases):
        labels.save(image_id, annotator="ana", curvature_class=case.curvature_class, roi_box=case.roi_box,
                    landmarks=case.landmarks, store=store)
    report = export("labelme", "films", tmp_path / "labelme", store=store)
    assert report.written == 6
    from core.data.measure import read_labelme

    record = read_labelme(tmp_path / "labelme" / "datasets-PNG" / f"{ids[0]:04d}.json")
    assert np.allclose(record.landmarks, cases[0].landmarks)
    assert "Curvature: 1.Lordotic" in (tmp_path / "labelme" / "datasets.csv").read_text()
    with pytest.raises(ValueError, match="unknown export"):
        export("pdf", "films", tmp_path / "x", store=store)
