"""The out-of-distribution score: the reference a classifier run stores, how a prediction is scored against it,
and what a flagged film shows (capped probabilities, the warning, the JSON keys). Real tiny training runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core.evaluation import ood
from core.runs import registry
from core.settings import CLASSES
from core.training import checkpoints, classify
from tests.helpers.tiny import FAST_OVERRIDES as FAST
from tests.helpers.tiny import import_tiny


def test_held_out_in_distribution_features_are_flagged_about_five_percent_and_shifted_ones_all():
    rng = np.random.default_rng(0)
    scales = np.linspace(3.0, 0.1, 40)  # anisotropic: the Mahalanobis distance matters, not the Euclidean one
    train, val, test = (rng.normal(size=(n, 40)) * scales for n in (400, 200, 2000))
    reference = ood.fit_reference(train, val)
    assert reference.threshold > 0 and reference.n_train == 400 and reference.n_val == 200
    assert 0.01 <= float(np.mean(reference.ratio(test) > 1)) <= 0.06  # the 97.5 % quantile of validation
    # the same step along the direction the training data barely vary in is far out, along the widest one it is
    # not: the distance follows the training data's own spread (shrunk, so a step must be large to count)
    narrow, wide = np.r_[np.zeros(39), 4.0], np.r_[4.0, np.zeros(39)]
    assert float(np.mean(reference.ratio(test + narrow) > 1)) > 0.95
    assert float(np.mean(reference.ratio(test + wide) > 1)) < 0.15
    crossed = ood.fit_reference(train, val, cross_fit=5)  # 400 more held-out rows for the tail
    assert 0.01 <= float(np.mean(crossed.ratio(test) > 1)) <= 0.05
    # films are framed less exactly at prediction than the training crops: scoring the held-out folds on framed
    # copies (here: a little noise) widens the threshold so that framed new films are flagged as rarely
    framed = train + rng.normal(size=train.shape) * scales * 0.3
    framed_test = test + rng.normal(size=test.shape) * scales * 0.3
    widened = ood.fit_reference(train, val, cross_fit=5, cross_fit_rows=framed)
    assert widened.threshold > crossed.threshold
    assert float(np.mean(widened.ratio(framed_test) > 1)) < float(np.mean(crossed.ratio(framed_test) > 1))
    with pytest.raises(ood.OodReferenceError, match="cross-fit"):
        ood.fit_reference(train, val, cross_fit=5, cross_fit_rows=framed[:, :5])
    # three films per patient, nearly alike: with row folds a patient's other films sit in the fitted folds and its
    # held-out one looks closer than a new patient's; patient folds keep the threshold where new patients need it
    patients = rng.normal(size=(100, 40)) * scales
    films = np.repeat(patients, 3, axis=0) + rng.normal(size=(300, 40)) * scales * 0.2
    ids = np.repeat([f"P{i}" for i in range(100)], 3)
    new_patients = rng.normal(size=(2000, 40)) * scales + rng.normal(size=(2000, 40)) * scales * 0.2
    by_row = ood.fit_reference(films, films[:3], cross_fit=5)
    by_patient = ood.fit_reference(films, films[:3], cross_fit=5, groups=ids)
    assert by_patient.threshold > by_row.threshold
    assert float(np.mean(by_patient.ratio(new_patients) > 1)) < float(np.mean(by_row.ratio(new_patients) > 1))
    with pytest.raises(ood.OodReferenceError, match="groups"):
        ood.fit_reference(films, films[:3], cross_fit=5, groups=ids[:10])
    again = ood.FeatureReference.from_meta(json.loads(json.dumps(reference.to_meta())))
    assert np.allclose(again.ratio(test[:50]), reference.ratio(test[:50]), rtol=1e-4)
    with pytest.raises(ood.OodReferenceError, match="columns"):
        reference.ratio(np.zeros((1, 3)))
    with pytest.raises(ood.OodReferenceError, match="finite"):
        ood.fit_reference(np.full((5, 4), np.nan), val[:, :4])


def test_the_components_combine_into_one_score_with_reasons():
    inside = ood.assess(0.5, np.full(23, 0.9), 0.25, detector_in_setup=True, box_found=True)
    assert not inside.flagged and inside.score == pytest.approx(0.5) and inside.reasons == []
    c7_hidden = np.r_[np.full(19, 0.9), np.full(4, 0.05)]  # four unsure points: still a neck film
    assert not ood.assess(0.5, c7_hidden, 0.25).flagged
    features = ood.assess(3.0)
    assert features.flagged and "further from its training films" in features.reasons[0]
    no_spine = ood.assess(0.2, detector_in_setup=True, box_found=False)
    assert no_spine.flagged and no_spine.components["detector"] > 1 and "no cervical spine" in no_spine.reasons[0]
    unsure = ood.assess(0.2, np.full(23, 0.1), 0.25)
    assert unsure.flagged and "unsure of 100%" in unsure.reasons[0]
    assert ood.assess(1e9).score == ood.MAX_SCORE
    pixels = ood.assess(0.4, image_ratio=2.5)  # a network may map noise near its features' mean: pixels tell
    assert pixels.flagged and pixels.score == pytest.approx(2.5) and "pixels" in pixels.reasons[0]
    nothing = ood.assess(None)
    assert nothing.score is None and not nothing.flagged


@pytest.mark.slow
def test_crop_statistics_tell_a_radiograph_from_noise_and_flat_images():
    from core.data.phantom import generate_case
    from core.training.crops import classifier_crop

    crops = [classifier_crop(generate_case(seed, size=192).image.astype(np.float32) / 255,
                             generate_case(seed, size=192).roi_box, 64).numpy()[0] for seed in range(30)]
    stats = ood.crop_statistics(np.stack(crops))
    assert stats.shape == (30, 22) and np.all(np.isfinite(stats))
    reference = ood.fit_reference(stats[:20], stats[20:])
    rng = np.random.default_rng(0)
    others = np.stack([rng.random((64, 64)), np.full((64, 64), 0.5), np.clip(rng.normal(0.5, 0.2, (64, 64)), 0, 1)])
    assert (reference.ratio(ood.crop_statistics(others)) > 1).all()
    assert ood.crop_statistics(np.full((96, 96), 0.3)).shape == (1, 22)  # any crop size, one crop


def test_capped_probabilities_keep_the_order_and_never_pass_ninety_percent():
    sure = {"normal": 0.999, "straightened": 0.0008, "reversed": 0.0002}
    capped = ood.cap_probabilities(sure)
    assert max(capped.values()) == pytest.approx(0.9) and sum(capped.values()) == pytest.approx(1.0)
    assert sorted(capped, key=capped.get) == sorted(sure, key=sure.get)
    modest = {"normal": 0.5, "straightened": 0.3, "reversed": 0.2}
    assert ood.cap_probabilities(modest) == modest


@pytest.fixture()
def tiny(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace)
    return workspace


@pytest.mark.slow
def test_a_finished_run_stores_its_reference_and_a_prediction_is_scored_against_it(tiny, tmp_path):
    from core.inference.pipeline import Predictor

    run_dir = classify.train(registry.load_config(None, FAST + ["epochs=2"]))
    meta = torch.load(run_dir / "best.pt", weights_only=True)["meta"]
    reference = ood.FeatureReference.from_meta(meta["ood_reference"])
    # the cnn's penultimate layer (its last linear layer's input), fitted on the 18 training crops
    model, _ = checkpoints.load_classifier(run_dir)
    width = classify.feature_layer(model).in_features
    assert reference.mean.shape == (width,) and reference.n_train == 18 and reference.n_val == 6
    assert "out-of-distribution reference" in (run_dir / "train.log").read_text()

    # a training film of the tiny set against pure noise of the same size, through the whole pipeline
    film = tiny.parent / "tiny-source" / "images" / "P000.png"
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    predictor = Predictor(run_dir, detector=False, landmarks=False)
    inside, outside = (predictor.predict(path, cam_method=None) for path in (film, noise))
    assert outside.ood_components["features"] > inside.ood_components["features"]
    assert outside.ood_components["image"] > 1 and set(outside.ood_components) == {"features", "image"}
    assert outside.out_of_distribution and outside.low_confidence and not outside.calibrated
    assert max(outside.probabilities.values()) <= ood.MAX_PROBABILITY_FLAGGED + 1e-9
    assert sum(outside.probabilities.values()) == pytest.approx(1.0)
    record = json.loads(json.dumps(outside.to_json()))
    assert record["out_of_distribution"] is True and record["ood_score"] == outside.ood_score
    assert record["probabilities_calibrated"] is False and record["ood_reasons"]
    # the Label page's "most uncertain first" counts how unlike the training films a film is, not only the
    # entropy of probabilities that the flag has already capped
    from dataclasses import replace

    from core.inference.drafts import make_draft

    draft = make_draft(predictor, noise)
    assert draft.ood_score == pytest.approx(outside.ood_score) and draft.record()["ood_score"] == pytest.approx(
        outside.ood_score, abs=1e-4)
    assert draft.uncertainty > replace(draft, ood_score=None).uncertainty
    # the CAM pass reads the same features as the plain pass
    with_cam = predictor.predict(noise, cam_method="gradcam")
    assert with_cam.ood_components == pytest.approx(outside.ood_components, rel=1e-4)
    assert set(with_cam.probabilities) == set(CLASSES)


@pytest.mark.slow
def test_the_svm_carries_a_reference_on_its_own_hog_features(tiny, tmp_path):
    from core.inference.pipeline import Predictor

    run_dir = classify.train(registry.load_config(None, FAST + ["model=svm"]))
    meta = torch.load(run_dir / "best.pt", weights_only=True)["meta"]
    assert {"ood_reference", "ood_image_reference"} <= set(meta)
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)).save(noise)
    predictor = Predictor(run_dir, detector=False, landmarks=False)
    inside = predictor.predict(tiny.parent / "tiny-source" / "images" / "P001.png", cam_method=None)
    outside = predictor.predict(noise, cam_method=None)
    assert set(outside.ood_components) == {"features", "image"}
    assert outside.ood_components["features"] > inside.ood_components["features"] and outside.out_of_distribution
    assert not any("no out-of-distribution reference" in note for note in outside.notes)


@pytest.mark.slow
def test_a_classifier_without_a_reference_says_so(tiny):
    from core.inference.pipeline import Predictor

    run_dir = classify.train(registry.load_config(None, FAST + ["epochs=1"]))
    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)
    for key in ("ood_reference", "ood_image_reference"):  # as a checkpoint trained before the references existed
        del checkpoint["meta"][key]
    old = run_dir / "old.pt"
    torch.save(checkpoint, old)
    result = Predictor(old, detector=False, landmarks=False).predict(
        tiny.parent / "tiny-source" / "images" / "P003.png", cam_method=None)
    assert result.ood_score is None and not result.out_of_distribution
    assert any("no out-of-distribution reference" in note for note in result.notes)


# ------------------------------------------------------------------------------------------ landmarks that fail soft
def test_a_hidden_c7_is_left_out_and_c2_to_c6_still_measured():
    from core.data.measure import LandmarkError, measure_landmarks, read_facing
    from core.data.phantom import generate_case
    from core.inference.verdict import describe_points, implausible
    from core.training.landmarks import visible_points

    case = generate_case(21, size=256, curvature_class="normal")
    confidence = np.r_[np.full(19, 0.8), np.full(4, 0.05)]  # C7's four corners unsure, as behind shoulders
    points, missing = visible_points(case.landmarks, confidence, 0.25)
    assert missing == ["C7 top left", "C7 top right", "C7 bottom left", "C7 bottom right"]
    assert np.isnan(points[19:]).all() and np.isfinite(points[:19]).all()
    assert describe_points(missing) == "C7 (all 4 points)"
    with pytest.raises(LandmarkError, match="C7"):
        measure_landmarks(points, facing=case.facing)  # a full measurement still needs every point
    # signed by the facing read from the film (C3-C6 are enough), as Predict does
    facing = read_facing(case.image.astype(np.float32) / 255, points).facing
    partial = measure_landmarks(points, facing=facing, partial=True)
    full = measure_landmarks(case.landmarks, facing=case.facing)
    assert partial.lowest_level == "C6" and partial.facing == case.facing
    assert partial.cobb_c2c6 == pytest.approx(full.cobb_c2c6) and np.isnan(partial.cobb_c2c7)
    assert partial.rule_class == "normal" and any("C2-C6 only" in note for note in partial.notes)
    # without the film, C2's lean over C6 decides, and says so
    assert any("facing inferred" in note for note in measure_landmarks(points, partial=True).notes)
    record = json.loads(json.dumps(partial.as_dict(), allow_nan=False))  # nan is None: valid JSON
    assert record["cobb_c2c7"] is None and record["cobb_c2c6"] == pytest.approx(full.cobb_c2c6, abs=1e-3)
    assert implausible(partial) is None
    from types import SimpleNamespace

    from core.inference.report import report_lines

    line = report_lines(SimpleNamespace(measurements=partial, agreement=True, box_source="detector", model="m"),
                        "")[0]
    assert line.startswith(f"Cobb C2–C6 {partial.cobb_c2c6:+.1f}° (C7 not seen)") and "nan" not in line  # PNG report
    # any other gap is not measured
    points[5] = np.nan
    with pytest.raises(LandmarkError, match="C3 bottom left"):
        measure_landmarks(points, partial=True)


def test_when_class_and_angle_disagree_the_note_says_which_evidence_wins():
    from core.data.measure import measure_landmarks
    from core.data.phantom import generate_case
    from core.inference.verdict import which_evidence

    far = measure_landmarks(generate_case(2, size=256, cobb_c2c7=30.0).landmarks)  # 20 deg from a threshold
    near = measure_landmarks(generate_case(2, size=256, cobb_c2c7=11.0).landmarks)  # 1 deg from 10 deg
    sure = np.full(23, 0.9)
    assert which_evidence(far, sure, [], 0.95, False).startswith("the angle")
    assert which_evidence(near, sure, [], 0.95, False).startswith("the network")
    assert which_evidence(far, np.full(23, 0.3), [], 0.95, False).startswith("neither clearly")
    assert which_evidence(far, sure, [], 0.95, True).startswith("neither: the film is unlike")


# ------------------------------------------------------------------------------------------ the Predict page
@pytest.mark.slow
def test_the_predict_page_warns_on_a_film_unlike_the_training_films(tmp_path, monkeypatch):
    from tests.helpers.models import promote_tiny_classifier
    from tests.helpers.pages import predict_page, upload

    home = tmp_path / "workspace"
    home.mkdir()
    promote_tiny_classifier(home)
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    monkeypatch.delenv("CERVICURVE_DB", raising=False)

    def noise_png(seed: int) -> bytes:
        import io

        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (128, 128), dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    at = upload(predict_page(), ("noise.png", noise_png(0)))
    assert not at.error
    assert any("unlike the films the models were trained on" in w.value and "no class is given" in w.value
               for w in at.warning)
    # no landmarks to measure either: the page leads with no class at all, not the capped network answer
    assert any(h.value == "noise.png: not judged — check this film by eye" for h in at.subheader)
    assert any(c.value == "Probabilities not calibrated for this film." for c in at.caption)
    at = upload(predict_page(), ("a.png", noise_png(1)), ("b.png", noise_png(2)))
    table = at.dataframe[0].value
    assert table["out_of_distribution"].tolist() == [True, True] and (table["ood_score"] > 1).all()
    assert table["class"].tolist() == ["not judged", "not judged"]


def test_a_flagged_film_with_sure_landmarks_leads_with_its_angle_and_the_report_says_so():
    """A real film the classifier has never seen the like of, but whose points are sure: the measured angle and
    its rule class are the result (title, JSON, PNG report), never the classifier's capped 90 %."""
    from core.data.imaging import Radiograph
    from core.data.measure import measure_landmarks
    from core.data.phantom import generate_case
    from core.inference import report
    from core.inference.pipeline import Prediction
    from core.inference.verdict import choose_lead

    case = generate_case(4, size=256, cobb_c2c7=25.0)
    m = measure_landmarks(case.landmarks, facing=case.facing)
    sure, unsure = np.full(23, 0.9), np.full(23, 0.3)
    assert choose_lead(False, m, [], sure) == "network"
    assert choose_lead(True, m, [], sure) == "angle"
    assert choose_lead(True, m, [], unsure) == "none"
    assert choose_lead(True, m, ["C7 top left"], sure) == "none"
    assert choose_lead(True, None, [], None) == "none"

    film = Radiograph(pixels=case.image.astype(np.float32) / 255, source_bit_depth=8, pixel_spacing_mm=None,
                      photometric="MONOCHROME2", original_size=(case.width, case.height))
    result = Prediction(file="real.png", curvature_class="straightened",
                        probabilities={"normal": 0.05, "straightened": 0.9, "reversed": 0.05}, roi_box=case.roi_box,
                        box_confidence=0.8, box_source="detector", low_confidence=True, cam=None, cam_method=None,
                        landmarks=case.landmarks, measurements=m, agreement=False, radiograph=film, timings={},
                        ood_score=2.4, out_of_distribution=True, calibrated=False, lead="angle")
    assert result.headline.startswith(f"normal by its measured angle (Cobb C2-C7 {m.cobb_c2c7:+.1f} deg")
    assert result.to_json()["lead"] == "angle"
    shown, text = report.report_text(result, "models")
    assert shown == "normal" and text[0].startswith("Result: normal by its measured angle")
    assert any("Unlike the films the models were trained on (out-of-distribution score 2.4" in t for t in text)
    assert report.report_png(result, "models").startswith(b"\x89PNG")
    none = Prediction(**{**result.__dict__, "lead": "none"})
    assert report.report_text(none, "models")[0] is None
