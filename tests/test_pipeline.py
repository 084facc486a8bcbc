"""core.inference.pipeline: read -> detect -> landmarks -> crop -> classify -> Grad-CAM, in-process and as the CLI.

The models are the tiny demo's (``core.demo.build("tiny")``: real detector, pose and S-ResNet-34 runs,
promoted the way a user's would be). They are barely trained, so the detector and landmark models run
with ``detection_threshold=0`` to always answer; what is checked is the data flow, not accuracy.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.settings import CLASSES

ROOT = Path(__file__).resolve().parents[1]
DESIGN_KEYS = {"file", "class", "probabilities", "box", "box_confidence", "low_confidence", "measurements", "cam",
               # how unlike the training films an image is (core.evaluation.ood), and what that changes
               "ood_score", "out_of_distribution", "ood_components", "ood_reasons", "probabilities_calibrated",
               "missing_landmarks", "evidence",
               # which way the patient faces and how that was known; what the result leads with, in one line;
               # the verdict every output carries (class given or None, why, what to do, what may be shown)
               "facing", "lead", "headline", "verdict"}
SIZE = 192


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A workspace holding the tiny demo's promoted detector, landmark model and classifier."""
    from core import demo

    home = tmp_path_factory.mktemp("pipeline") / "workspace"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CERVICURVE_HOME", str(home))
        patch.delenv("CERVICURVE_DB", raising=False)
        demo.build("tiny")
    return home


@pytest.fixture()
def home(demo_home, monkeypatch):
    monkeypatch.setenv("CERVICURVE_HOME", str(demo_home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)
    return demo_home


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    """One 8-bit PNG per class, with the truth."""
    from core.data.phantom import generate_case

    folder = tmp_path_factory.mktemp("phantoms")
    files = {}
    for seed, cls in enumerate(CLASSES):
        case = generate_case(100 + seed, size=SIZE, curvature_class=cls)
        path = folder / f"{cls}.png"
        Image.fromarray(case.image).save(path)
        files[cls] = (path, case)
    return files


def run_cli(args, home, timeout=300):
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_each_class_gives_a_full_prediction(home, phantom_files):
    from core.inference.pipeline import STAGES, Predictor
    from core.training.crops import crop_box

    predictor = Predictor(detection_threshold=0.0)  # the promoted models
    assert predictor.quality == "tiny" and predictor.model_name == "s_resnet34"
    for cls, (path, case) in phantom_files.items():
        result = predictor.predict(path)
        height, width = case.image.shape
        assert result.curvature_class in CLASSES and result.model == "s_resnet34"
        assert set(result.probabilities) == set(CLASSES)
        assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
        # an out-of-distribution film is low-confidence whatever its probabilities (the tiny models flag many)
        assert result.low_confidence == (max(result.probabilities.values()) < 0.6 or result.out_of_distribution)
        assert result.ood_score is not None and result.calibrated == (not result.out_of_distribution)
        assert result.box_source == "detector" and 0.0 <= result.box_confidence <= 1.0
        x1, y1, x2, y2 = result.roi_box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        # the map lies on the radiograph, in [0, 1], and only where the classifier looked
        assert result.cam.shape == (height, width) and result.cam_method == "gradcam"
        assert result.cam.min() >= 0.0 and result.cam.max() <= 1.0 and result.cam.max() > 0.0
        # the classifier reads the landmarks' box when every point is sure, else the detector's
        cx1, cy1, cx2, cy2 = crop_box(result.crop_box, (width, height), predictor.meta["roi_margin"])
        outside = result.cam.copy()
        outside[max(0, int(cy1)):int(np.ceil(cy2)), max(0, int(cx1)):int(np.ceil(cx2))] = 0
        assert outside.max() == 0.0
        assert result.landmarks.shape == (23, 2) and np.isfinite(result.landmarks).all()
        # the demo's landmark model reads the detector's crop; its points come back in image pixels
        assert predictor.landmark_model.needs_box and predictor.landmark_model.crop_margin > 0
        # the tiny pose model's points are near random: an impossible angle must be withheld, not shown
        if result.measurements is None:
            assert any("implausible C2-C7 angle" in note for note in result.notes), result.notes
            assert result.agreement is None
        else:
            assert abs(result.measurements.cobb_c2c7) <= 80 and result.measurements.rule_class in CLASSES
            assert result.agreement == (result.measurements.rule_class == result.curvature_class)
        assert set(result.timings) == set(STAGES) and all(v >= 0 for v in result.timings.values())
        assert result.radiograph.pixels.shape == (height, width)

        record = json.loads(json.dumps(result.to_json()))  # plain JSON types only
        assert set(record) == DESIGN_KEYS
        assert record["class"] == result.curvature_class and record["file"] == str(path)
        assert record["headline"] == record["verdict"]["title"] == result.verdict.title
        # the tiny models flag these phantoms: the class given is the angle's or none, never the capped network's
        if result.out_of_distribution:
            assert record["verdict"]["class"] in (None, getattr(result.measurements, "rule_class", None))
            assert not record["verdict"]["heatmap_shown"]
        assert len(record["box"]) == 4 and record["cam"] is None
        if result.measurements is not None:
            assert {"cobb_c2c7", "cci", "rule_class", "agrees_with_class"} <= set(record["measurements"])


@pytest.mark.slow
def test_without_detector_and_landmarks_the_whole_image_is_classified_and_flagged(home, phantom_files):
    from core.inference.pipeline import Predictor

    path, case = phantom_files["normal"]
    result = Predictor(detector=False, landmarks=False).predict(path, cam_method="eigencam")
    height, width = case.image.shape
    assert result.box_source == "whole image" and result.roi_box == [0.0, 0.0, float(width), float(height)]
    assert result.low_confidence and result.box_confidence is None
    assert result.measurements is None and result.landmarks is None and result.agreement is None
    assert result.cam.shape == (height, width) and result.cam_method == "eigencam"
    assert any("whole image" in note for note in result.notes)
    assert result.to_json()["measurements"] is None


@pytest.mark.slow
def test_a_low_scored_box_counts_only_when_the_landmarks_in_it_are_sure(home, phantom_files, monkeypatch):
    # A briefly trained detector places the box well but scores it low; one spine per film makes its best box a
    # candidate, and the landmark model decides. The tiny models score everything under 0.99.
    from core.inference import pipeline

    predictor = pipeline.Predictor(detection_threshold=0.99)
    monkeypatch.setattr(pipeline, "SURE_LANDMARKS", 1.01)  # no landmark set is ever sure enough
    for path, _ in phantom_files.values():
        result = predictor.predict(path, cam_method=None)
        assert result.box_source == "whole image" and result.box_confidence is None
        assert result.landmarks is None and result.measurements is None and result.agreement is None
        assert any("its best box scored" in note and "did not confirm" in note for note in result.notes)
        assert not any(note.startswith("the landmark model") for note in result.notes)
        assert result.out_of_distribution and result.ood_components["detector"] > 1
    monkeypatch.setattr(pipeline, "SURE_LANDMARKS", -1.0)  # every landmark set is sure
    monkeypatch.setattr(pipeline, "implausible", lambda measurements: None)  # and its angle believed
    # a threshold just over the best box's score (it is also the points' threshold: keep it low)
    scores = [predictor.detector.detect(case.image / 255.0, pipeline.CANDIDATE_FLOOR)[1]
              for _, case in phantom_files.values()]
    predictor.detection_threshold = max(scores) + 1e-3
    measured = 0
    for path, _ in phantom_files.values():
        result = predictor.predict(path, cam_method=None)
        if result.measurements is None:  # tiny landmarks too scattered to measure: nothing to confirm
            assert result.box_source == "whole image"
            continue
        measured += 1
        assert result.box_source == "detector" and 0.0 < result.box_confidence < predictor.detection_threshold
        assert result.ood_components["detector"] == 0.0
        assert not any("found no cervical spine" in note for note in result.notes)
    # without a landmark model there is nothing to confirm a candidate: the threshold alone decides
    alone = pipeline.Predictor(landmarks=False, detection_threshold=0.99).predict(phantom_files["normal"][0],
                                                                                    cam_method=None)
    assert alone.box_source == "whole image" and "the detector found no cervical spine" in alone.notes
    assert measured >= 1


def test_impossible_angles_from_predicted_points_are_withheld(phantom_files):
    from core.data.measure import measure_landmarks
    from core.inference.verdict import implausible

    _, case = phantom_files["normal"]
    assert implausible(measure_landmarks(case.landmarks, facing=case.facing)) is None
    # C7's lower endplate turned by 100 degrees about its middle: no spine bends like that
    broken = case.landmarks.copy()
    corners = broken[21:23]
    middle = corners.mean(axis=0)
    turn = np.radians(-100)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    broken[21:23] = (corners - middle) @ rotation.T + middle
    assert "implausible C2-C7 angle" in implausible(measure_landmarks(broken, facing=case.facing))


@pytest.mark.slow
def test_a_crop_landmark_model_without_a_box_gives_no_measurements(home, phantom_files):
    from core.inference.pipeline import Predictor

    result = Predictor(detector=False, detection_threshold=0.0).predict(phantom_files["reversed"][0], cam_method=None)
    assert result.box_source == "whole image" and result.measurements is None and result.landmarks is None
    assert any("detector's crop" in note for note in result.notes)


@pytest.mark.slow
def test_uploads_in_a_batch_with_a_broken_one(home, phantom_files):
    from core.inference.pipeline import PredictFailure, Prediction, Predictor

    good = phantom_files["reversed"][0].read_bytes()
    seen = []
    results = list(Predictor(detection_threshold=0.0).predict_many(
        [("first.png", good), ("broken.png", good[:200]), ("last.png", good)],
        progress=lambda done, total, name: seen.append((done, total, name)), cam_method=None))
    assert [type(r) for r in results] == [Prediction, PredictFailure, Prediction]
    assert results[1].file == "broken.png" and "broken.png" in results[1].reason
    assert results[0].cam is None and results[0].curvature_class == results[2].curvature_class
    assert seen == [(0, 3, "first.png"), (1, 3, "broken.png"), (2, 3, "last.png")]


@pytest.mark.slow
def test_sessions_share_one_loaded_model_and_a_new_file_is_reloaded(home):
    from core.runs.promotion import promoted_model
    from core.inference.pipeline import Predictor

    first, second = Predictor(), Predictor()
    assert first.model is second.model and first.detector is second.detector
    checkpoint = promoted_model("classify")
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # re-promoted
    assert Predictor().model is not first.model


@pytest.mark.slow
def test_two_threads_predict_with_one_predictor(home, phantom_files):
    from core.inference.pipeline import Predictor

    predictor = Predictor(detection_threshold=0.0)
    paths = [phantom_files["normal"][0], phantom_files["straightened"][0]]
    alone = [predictor.predict(p) for p in paths]
    results, errors = {}, []
    barrier = threading.Barrier(2)

    def work(i):
        try:
            barrier.wait()
            results[i] = predictor.predict(paths[i])
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for i in range(2):
        assert results[i].probabilities == pytest.approx(alone[i].probabilities, abs=1e-5)
        assert results[i].roi_box == pytest.approx(alone[i].roi_box, abs=1e-3)
        assert np.allclose(results[i].cam, alone[i].cam, atol=1e-4)


@pytest.mark.slow
def test_dicom_16_bit_monochrome1_matches_the_png(home, tmp_path):
    """The same phantom as 8-bit PNG, 16-bit PNG and 12-bit MONOCHROME1 DICOM: same class, box and angle."""
    from core.data.phantom import write_phantoms
    from core.inference.pipeline import Predictor

    write_phantoms(tmp_path / "eight", 1, seed=5, size=SIZE, bit_depth=8)
    write_phantoms(tmp_path / "sixteen", 1, seed=5, size=SIZE, bit_depth=16, formats=("dicom",),
                   dicom_photometric="MONOCHROME1")
    files = [tmp_path / "eight/images/P0001_01.png", tmp_path / "sixteen/images/P0001_01.png",
             tmp_path / "sixteen/dicom/P0001_01.dcm"]
    predictor = Predictor(detection_threshold=0.0)
    png8, png16, dicom = (predictor.predict(f, cam_method=None) for f in files)
    assert dicom.radiograph.meta["original_photometric"] == "MONOCHROME1"
    assert dicom.radiograph.source_bit_depth == 12 and png16.radiograph.source_bit_depth == 16
    for other in (png16, dicom):
        assert other.curvature_class == png8.curvature_class
        assert other.probabilities == pytest.approx(png8.probabilities, abs=0.02)
        assert other.box_source == png8.box_source == "detector"
        assert np.allclose(other.roi_box, png8.roi_box, atol=3.0), (other.roi_box, png8.roi_box)
        assert np.allclose(other.landmarks, png8.landmarks, atol=3.0)
    assert dicom.radiograph.pixel_spacing_mm is not None  # the DICOM states it: arc depth in mm when measured


@pytest.mark.slow
def test_cli_batch_reports_the_corrupt_file_and_predicts_the_rest(home, phantom_files, tmp_path):
    first, last = phantom_files["normal"][0], phantom_files["straightened"][0]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(first.read_bytes()[:300])  # a PNG cut short
    out = tmp_path / "out"
    done = run_cli(["predict", str(first), str(corrupt), str(last), "--json", "--out", str(out)], home)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["file"] for r in records] == [str(first), str(corrupt), str(last)]
    assert set(records[1]) == {"file", "error"} and "corrupt.png" in records[1]["error"]
    for record, source in ((records[0], first), (records[2], last)):
        assert set(record) == DESIGN_KEYS and record["class"] in CLASSES
        if record["verdict"]["heatmap_shown"]:  # the map is written only as evidence for the class given
            overlay = Image.open(record["cam"])
            assert Path(record["cam"]).parent == out and overlay.mode == "RGB"
            assert overlay.size == Image.open(source).size
        else:  # the tiny detector finds no spine at the default threshold: no class, so no map
            assert record["cam"] is None and not (out / f"{source.stem}_cam.png").exists()
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows] == [str(first), str(corrupt), str(last)]
    assert rows[1]["error"] and not rows[0]["error"] and rows[0]["class"] == records[0]["class"]
    assert list(rows[0])[:2] == ["file", "verdict"]
    for row, record in ((rows[0], records[0]), (rows[2], records[2])):
        assert row["verdict"] == record["headline"] == record["verdict"]["title"]
        assert row["judged"] == str(record["verdict"]["judged"]) and row["why"] == record["verdict"]["why"]
    assert float(rows[2]["p_" + records[2]["class"]]) == pytest.approx(records[2]["probabilities"][records[2]["class"]],
                                                                       abs=1e-3)


def test_missing_classifier_is_a_clear_message(workspace, phantom_files):
    from core.inference.pipeline import ModelMissing, Predictor

    with pytest.raises(ModelMissing, match="python -m core demo"):
        Predictor()
    done = run_cli(["predict", str(phantom_files["normal"][0])], workspace)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "python -m core demo" in done.stderr and "promote" in done.stderr
    done = run_cli(["predict", str(phantom_files["normal"][0]), "--model", str(workspace / "nope.pt")], workspace)
    assert done.returncode != 0 and "Traceback" not in done.stderr and "nope.pt" in done.stderr


@pytest.mark.slow
def test_cli_writes_the_page_report(home, phantom_files, tmp_path):
    """`predict FILE --report OUT.png` writes the one-page report the Predict page downloads (same function)."""
    out = tmp_path / "report.png"
    done = run_cli(["predict", str(phantom_files["normal"][0]), "--report", str(out)], home)
    assert done.returncode == 0, done.stderr[-2000:]
    page = Image.open(out)
    assert page.format == "PNG" and page.width >= 900
    assert page.getpixel((5, page.height - 5)) == (255, 243, 205)  # the research-use notice band


@pytest.mark.slow
def test_the_models_line_names_the_promoted_runs(home):
    from core.inference.pipeline import Predictor
    from core.inference.report import provenance

    line = provenance(Predictor())
    runs = {task: json.loads((home / "promoted" / task / "promoted.json").read_text())["run_id"]
            for task in ("classify", "detect", "landmarks")}
    assert line == (f"classifier run {runs['classify']} (promoted) · detector run {runs['detect']} (promoted) · "
                    f"landmarks run {runs['landmarks']} (promoted)")
    assert provenance(Predictor(detector=False, landmarks=False)).endswith("detector none · landmarks none")


@pytest.mark.slow
def test_preload_loads_each_model_once_while_a_request_waits_for_it(home, phantom_files):
    from core.inference import models, pipeline

    models.CACHE.clear()
    pipeline._preloaded.clear()
    before = models.CACHE.loads
    thread = pipeline.preload()
    assert thread is not None and pipeline.preload() is None  # once per set of model files
    result = pipeline.Predictor(detection_threshold=0.0).predict(phantom_files["normal"][0])  # meanwhile
    thread.join(timeout=300)
    assert result.curvature_class in CLASSES
    assert models.CACHE.loads - before == 3  # classifier, detector, landmarks: each loaded once, not twice


@pytest.mark.slow
def test_a_screenshot_is_not_judged_and_nothing_is_drawn_on_it(home, tmp_path):
    """Not a film (flat panels, a banner, text): no class, no landmarks, endplates or heatmap, whether the detector
    finds nothing (the default threshold) or is made to answer with its best box (threshold 0)."""
    from tests.helpers.films import colour_pixels, screenshot_png
    from core.inference import report
    from core.inference.pipeline import Predictor
    from core.inference.verdict import NOT_JUDGED_TITLE

    shot = tmp_path / "shot.png"
    shot.write_bytes(screenshot_png())
    for threshold in (None, 0.0):
        predictor = Predictor() if threshold is None else Predictor(detection_threshold=threshold)
        result = predictor.predict(shot)
        verdict = result.verdict
        assert result.out_of_distribution and verdict.lead == "none" and verdict.title == NOT_JUDGED_TITLE
        assert verdict.curvature_class is None and not verdict.angle_shown and not verdict.heatmap_shown
        assert "no class is given" in verdict.why and "Label page" in verdict.advice
        if threshold is None:
            assert result.spine_found is False and verdict.why.startswith("The detector found no cervical spine")
        annotated, heatmap = report.pictures(result, evidence_only=True)
        assert heatmap is None
        assert colour_pixels(annotated, report.LANDMARK_COLOUR) == colour_pixels(annotated, report.ENDPLATE_COLOUR) == 0
        shown, lines = report.report_text(result, report.provenance(predictor))
        assert shown is None and lines[0] == f"Result: {NOT_JUDGED_TITLE}"
        assert not any("Cobb" in line or "agrees" in line for line in lines)
        record = json.loads(json.dumps(result.to_json()))
        assert record["verdict"]["class"] is None and record["headline"] == NOT_JUDGED_TITLE
        assert record["measurements"] is None or record["measurements"]["withheld"] is True
