"""Metrics: hand-computed cases, temperature scaling, patient-level bootstrap."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from core.evaluation import metrics
from core.settings import CLASSES

# 10 images; rows = true, columns = predicted:  [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0])


def one_hot_probs(y_pred, confidence=0.8, num_classes=3):
    probs = np.full((len(y_pred), num_classes), (1 - confidence) / (num_classes - 1))
    probs[np.arange(len(y_pred)), y_pred] = confidence
    return probs


def point_values(y_true, probs) -> dict:
    """The report's point values, one patient per image, no bootstrap."""
    report = metrics.evaluate_predictions(y_true, probs, [str(i) for i in range(len(y_true))], CLASSES, n_boot=0)
    return {"confusion_matrix": report["confusion_matrix"],
            **{name: score["value"] for name, score in report["metrics"].items()},
            **{f"{cls} {name}": score["value"] for cls, per in report["per_class"].items()
               for name, score in per.items() if name != "support"}}


def nll_by_image(y_true, probs) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(probs)), y_true], 1e-12, None)).mean())


def ece_by_image(y_true, probs, n_bins=metrics.ECE_BINS) -> float:
    """Top-label ECE over equal-width bins (lo, hi], summed image by image."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    return sum(abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(n_bins)) / len(y_true)


def test_hand_computed_three_class_case():
    scores = point_values(Y_TRUE, one_hot_probs(Y_PRED))
    assert scores["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    assert scores["accuracy"] == pytest.approx(0.7)
    assert [scores[f"{c} precision"] for c in CLASSES] == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert [scores[f"{c} recall"] for c in CLASSES] == pytest.approx([3 / 4, 2 / 3, 2 / 3])
    assert scores["macro_f1"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    # each class: 2 of 10 images on the wrong side of "k vs rest" -> 0.8; equals 1 - 2 * (1 - 0.7) / 3
    assert scores["mean_one_vs_rest_accuracy"] == pytest.approx(0.8)
    # quadratic weights (i - j)^2 / 4: observed 0.25 + 0.25 + 1 = 1.5, chance 3.45 -> 1 - 1.5 / 3.45 = 13/23
    assert scores["quadratic_kappa"] == pytest.approx(13 / 23)


def test_kappa_punishes_normal_called_reversed_more_than_straightened():
    truth = np.array([0, 0, 1, 1, 2, 2])
    near = np.array([1, 0, 1, 1, 2, 2])
    far = np.array([2, 0, 1, 1, 2, 2])
    assert (point_values(truth, one_hot_probs(near))["quadratic_kappa"]
            > point_values(truth, one_hot_probs(far))["quadratic_kappa"])


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.05, 0.05],    # confidence 0.9, correct
                      [0.9, 0.05, 0.05],    # confidence 0.9, wrong
                      [0.05, 0.65, 0.3],    # confidence 0.65, correct
                      [0.3, 0.05, 0.65]])   # confidence 0.65, correct
    labels = np.array([0, 1, 1, 2])
    # bin of 0.9: |0.5 - 0.9| x 2/4 = 0.2; bin of 0.65: |1 - 0.65| x 2/4 = 0.175
    assert point_values(labels, probs)["expected_calibration_error"] == pytest.approx(0.375)


def test_temperature_scaling_softens_over_confident_logits():
    rng = np.random.default_rng(0)
    honest = rng.normal(0, 1.5, size=(4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(honest, axis=1)])
    over_confident = 4.0 * honest
    temperature = metrics.fit_temperature(over_confident, labels)
    assert 3.5 < temperature < 4.5
    before = point_values(labels, softmax(over_confident, axis=1))["negative_log_likelihood"]
    after = point_values(labels, softmax(over_confident / temperature, axis=1))["negative_log_likelihood"]
    assert after < before - 0.1
    with pytest.raises(ValueError, match="N x K"):
        metrics.fit_temperature(over_confident, labels[:10])


def test_auc_of_a_class_missing_from_the_truth_is_undefined_and_noted():
    y = np.array([0, 0, 1, 1, 0, 1])
    probs = np.array([[.7, .2, .1], [.6, .3, .1], [.2, .7, .1], [.4, .5, .1], [.5, .4, .1], [.3, .6, .1]])
    report = metrics.evaluate_predictions(y, probs, ["a", "a", "b", "b", "c", "c"], CLASSES, n_boot=50)
    assert report["per_class"]["normal"]["roc_auc"]["value"] == pytest.approx(1.0)
    assert report["per_class"]["reversed"]["roc_auc"]["value"] is None
    assert report["metrics"]["macro_roc_auc"]["value"] == pytest.approx(1.0)
    assert any("reversed" in note and "ROC-AUC" in note for note in report["notes"])
    json.dumps(report, allow_nan=False)


def random_study(seed=0, patients=40, images_per_patient=(1, 4)):
    rng = np.random.default_rng(seed)
    counts = rng.integers(*images_per_patient, size=patients, endpoint=True)
    patient_ids = np.repeat([f"P{i:03d}" for i in range(patients)], counts)
    y = rng.integers(0, 3, size=len(patient_ids))
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 1.2
    probs = np.round(softmax(logits, axis=1), 2)   # rounding makes ties, as real scores have
    return y, probs / probs.sum(axis=1, keepdims=True), patient_ids


def test_report_point_values_are_scikit_learns_and_intervals_contain_them():
    y, probs, patient_ids = random_study()
    report = metrics.evaluate_predictions(y, probs, patient_ids, CLASSES, n_boot=300, seed=1)
    pred = probs.argmax(axis=1)
    m = report["metrics"]
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["quadratic_kappa"]["value"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert m["macro_roc_auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["expected_calibration_error"]["value"] == pytest.approx(ece_by_image(y, probs))
    assert m["negative_log_likelihood"]["value"] == pytest.approx(nll_by_image(y, probs))
    assert m["mean_one_vs_rest_accuracy"]["value"] == pytest.approx(1 - 2 * (1 - accuracy_score(y, pred)) / 3)
    for name, score in list(m.items()) + [(f"{c} {k}", v) for c, per in report["per_class"].items()
                                         for k, v in per.items() if k != "support"]:
        assert score["low"] <= score["value"] <= score["high"], name
        assert score["low"] < score["high"], name
    assert report["n_patients"] == 40 and report["n_images"] == len(y)
    assert sum(map(sum, report["confusion_matrix"])) == len(y)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    again = metrics.evaluate_predictions(y, probs, patient_ids, CLASSES, n_boot=300, seed=1)
    assert again == report


def test_a_bootstrap_replicate_equals_scoring_the_resampled_images():
    """Drawing patient p c_p times is the same as scoring a data set holding its images c_p times."""
    y, probs, patient_ids = random_study(seed=2, patients=12)
    stats = metrics._PatientStats(y, probs, patient_ids, 3)
    counts = np.random.default_rng(3).multinomial(12, np.full(12, 1 / 12))
    scores = {k: v[0] for k, v in stats.scores(counts[None]).items()}
    patients = np.unique(patient_ids)
    index = np.concatenate([np.tile(np.flatnonzero(patient_ids == p), c) for p, c in zip(patients, counts)])
    ys, ps = y[index], probs[index]
    assert scores["accuracy"] == pytest.approx(accuracy_score(ys, ps.argmax(1)))
    assert scores["macro_f1"] == pytest.approx(f1_score(ys, ps.argmax(1), average="macro", labels=[0, 1, 2],
                                                         zero_division=0))
    assert scores["quadratic_kappa"] == pytest.approx(cohen_kappa_score(ys, ps.argmax(1), weights="quadratic"))
    assert scores["roc_auc"] == pytest.approx([roc_auc_score(ys == k, ps[:, k]) for k in range(3)])
    assert scores["expected_calibration_error"] == pytest.approx(ece_by_image(ys, ps))
    assert scores["negative_log_likelihood"] == pytest.approx(nll_by_image(ys, ps))


def test_bootstrap_moves_all_images_of_a_patient_together():
    # Patient A: 1 image, right. Patient B: 9 images, all wrong. Drawing patients, a replicate's accuracy
    # is 0 (B, B), 0.1 (A, B) or 1 (A, A) -- each (A, A) draw has probability 1/4, so the upper bound is 1.
    # Drawing images instead, accuracy ~ Binomial(10, 0.1) / 10 and would essentially never reach 1.
    y = np.zeros(10, dtype=int)
    pred = np.array([0] + [1] * 9)
    report = metrics.evaluate_predictions(y, one_hot_probs(pred), ["A"] + ["B"] * 9, CLASSES, n_boot=1000, seed=0)
    accuracy = report["metrics"]["accuracy"]
    assert accuracy["value"] == pytest.approx(0.1)
    assert accuracy["low"] == 0.0 and accuracy["high"] == 1.0
    assert any("2 patients" in note for note in report["notes"])


@pytest.mark.parametrize("y, probs, patients, message", [
    ([0, 1], [[0.5, 0.5], [0.5, 0.5]], ["a", "b"], "N x 3"),
    ([0, 1], [[0.9, 0.9, 0.1], [0.2, 0.3, 0.5]], ["a", "b"], "sum to 1"),
    (["normal", "kyphotic"], [[1, 0, 0], [0, 1, 0]], ["a", "b"], "unknown class names"),
    ([0, 1], [[1, 0, 0], [0, 1, 0]], ["a"], "one id per image"),
    ([0, 3], [[1, 0, 0], [0, 1, 0]], ["a", "b"], "class indices"),
])
def test_bad_input_is_a_value_error(y, probs, patients, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate_predictions(y, probs, patients, CLASSES, n_boot=10)


def test_class_names_are_accepted_as_labels():
    report = metrics.evaluate_predictions(["normal", "reversed"], [[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], ["a", "b"],
                                          CLASSES, n_boot=20)
    assert report["metrics"]["accuracy"]["value"] == 1.0
