"""Classification scores with patient-level bootstrap intervals.

Names say what is computed. In particular ``mean_one_vs_rest_accuracy`` is the mean over classes of the
binary accuracy "this class vs the rest"; with K classes it equals ``1 - 2 (1 - accuracy) / K`` and is
probably what the S-ResNet-34 paper reports as "ACC" (its 90.94 % matches a plain 3-class accuracy of
86.4 %). Both are reported, never confused.

Classes are ordered (normal < straightened < reversed), so the quadratic-weighted Cohen's kappa counts
"normal" called "reversed" as worse than "normal" called "straightened".

Intervals resample PATIENTS with replacement, never images: images of one patient are correlated, and an
image-level bootstrap would give intervals that are too narrow. Every score is a function of per-patient
sums (confusion matrices, calibration-bin sums, weighted ranks), so each bootstrap replicate is a weighted
sum and 1000 replicates take well under a second. Tests check the point values against scikit-learn and
hand-computed cases, and a replicate against scoring the resampled images directly.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import confusion_matrix

ECE_BINS = 15
_CHUNK = 250   # bootstrap replicates scored at once (bounds memory: replicates x images floats)


# --- single scores (point values) ----------------------------------------------------------------------

def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))


def fit_temperature(logits, labels) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) on validation data (T > 1 softens)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"logits must be N x K with one label each; got {logits.shape} and {labels.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinite values")
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[rows, labels].mean())

    # Search log T so T stays positive; [1/100, 100] covers any sensible network.
    result = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded",
                             options={"xatol": 1e-6})
    return float(math.exp(result.x))


# --- the report ----------------------------------------------------------------------------------------

def evaluate_predictions(y_true, probs, patient_ids: Sequence, classes: Sequence[str], n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """All scores, each ``{"value", "low", "high"}`` (95 % percentile interval over patient resamples).

    ``y_true``: class indices (or class names); ``probs``: N x K probabilities in ``classes`` order;
    ``patient_ids``: one per image. Undefined values are ``None`` and explained in ``notes``; the result
    is plain data (``json.dumps`` works).
    """
    classes = list(classes)
    y_true, probs, patients = _validate(y_true, probs, patient_ids, classes)
    num_classes, n_images = len(classes), len(y_true)
    stats = _PatientStats(y_true, probs, patients, num_classes)
    notes: list[str] = []

    point = stats.scores(np.ones((1, stats.n_patients)))
    rng = np.random.default_rng(seed)
    replicates = []
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        # How many times each patient is drawn when drawing n_patients with replacement.
        counts = rng.multinomial(stats.n_patients, np.full(stats.n_patients, 1.0 / stats.n_patients), size=size)
        replicates.append(stats.scores(counts))
    boot = {name: np.concatenate([r[name] for r in replicates]) for name in point} if n_boot else {}

    def summary(name: str, column: int | None = None) -> dict:
        value = point[name][0] if column is None else point[name][0, column]
        low = high = math.nan
        if n_boot:
            sample = boot[name] if column is None else boot[name][:, column]
            sample = sample[np.isfinite(sample)]
            if sample.size:
                low, high = np.percentile(sample, [2.5, 97.5])
        return {"value": _plain(value), "low": _plain(low), "high": _plain(high)}

    absent = [classes[k] for k in range(num_classes) if not (y_true == k).any()]
    if absent:
        notes.append(f"no image of class {', '.join(absent)} in y_true: its ROC-AUC is undefined (null) "
                     "and its recall counts as 0 in the macro averages")
    never = [classes[k] for k in range(num_classes) if not (probs.argmax(1) == k).any()]
    if never:
        notes.append(f"class {', '.join(never)} is never predicted: its precision counts as 0")
    if stats.n_patients < 20:
        notes.append(f"only {stats.n_patients} patients: bootstrap intervals are rough")

    metrics = {name: summary(name) for name in (
        "accuracy", "mean_one_vs_rest_accuracy", "macro_precision", "macro_recall", "macro_f1",
        "quadratic_kappa", "macro_roc_auc", "expected_calibration_error", "negative_log_likelihood")}
    per_class = {
        cls: {"support": int((y_true == k).sum()),
              **{name: summary(name, k) for name in ("precision", "recall", "f1", "one_vs_rest_accuracy", "roc_auc")}}
        for k, cls in enumerate(classes)}
    return {
        "classes": classes, "n_images": n_images, "n_patients": stats.n_patients,
        "metrics": metrics, "per_class": per_class,
        "confusion_matrix": confusion(y_true, probs.argmax(1), num_classes).tolist(),
        "bootstrap": {"unit": "patient", "n_boot": n_boot, "seed": seed, "interval": "95% percentile",
                      "ece_bins": ECE_BINS},
        "notes": notes,
    }


class _PatientStats:
    """Per-patient sums from which every score of any patient-weighted resample follows."""

    def __init__(self, y_true: np.ndarray, probs: np.ndarray, patients: np.ndarray, num_classes: int) -> None:
        self.num_classes = num_classes
        _, self.patient_of_image = np.unique(patients, return_inverse=True)
        self.n_patients = int(self.patient_of_image.max()) + 1
        P, K = self.n_patients, num_classes
        y_pred = probs.argmax(axis=1)
        cell = self.patient_of_image * K * K + y_true * K + y_pred
        self.confusions = np.bincount(cell, minlength=P * K * K).reshape(P, K, K).astype(np.float64)
        confidence = probs.max(axis=1)
        bins = self.patient_of_image * ECE_BINS + _bin_index(confidence, ECE_BINS)
        self.bin_gap = (np.bincount(bins, y_pred == y_true, P * ECE_BINS)
                        - np.bincount(bins, confidence, P * ECE_BINS)).reshape(P, ECE_BINS)
        picked = np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)
        self.log_loss = np.bincount(self.patient_of_image, -np.log(picked), P)
        self.y_true, self.probs = y_true, probs

    def scores(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Scores for each row of ``weights`` (replicates x patients: how often each patient is counted)."""
        cm = np.einsum("rp,pij->rij", weights, self.confusions)
        total = cm.sum(axis=(1, 2))
        tp = np.diagonal(cm, axis1=1, axis2=2)
        true_count, pred_count = cm.sum(axis=2), cm.sum(axis=1)
        precision = _ratio(tp, pred_count)
        recall = _ratio(tp, true_count)
        f1 = _ratio(2 * tp, true_count + pred_count)
        ovr_accuracy = (total[:, None] - true_count - pred_count + 2 * tp) / total[:, None]
        K = self.num_classes
        penalty = (np.subtract.outer(np.arange(K), np.arange(K)) / (K - 1)) ** 2
        expected = true_count[:, :, None] * pred_count[:, None, :] / total[:, None, None]
        chance = (expected * penalty).sum(axis=(1, 2))
        kappa = 1 - _ratio((cm * penalty).sum(axis=(1, 2)), chance)
        kappa[chance <= 0] = np.nan   # one class only: kappa undefined (as in scikit-learn)
        image_weights = weights[:, self.patient_of_image]
        auc = np.column_stack([_weighted_auc(self.probs[:, k], self.y_true == k, image_weights) for k in range(K)])
        defined = ~np.isnan(auc)   # macro AUC over the classes present in the resample
        macro_auc = np.where(defined.any(axis=1), np.nansum(auc, axis=1) / np.maximum(defined.sum(axis=1), 1), np.nan)
        return {
            "accuracy": tp.sum(axis=1) / total,
            "mean_one_vs_rest_accuracy": ovr_accuracy.mean(axis=1),
            "macro_precision": precision.mean(axis=1), "macro_recall": recall.mean(axis=1),
            "macro_f1": f1.mean(axis=1), "quadratic_kappa": kappa, "macro_roc_auc": macro_auc,
            "expected_calibration_error": np.abs(weights @ self.bin_gap).sum(axis=1) / total,
            "negative_log_likelihood": weights @ self.log_loss / total,
            "precision": precision, "recall": recall, "f1": f1, "one_vs_rest_accuracy": ovr_accuracy, "roc_auc": auc,
        }


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC (Mann-Whitney, ties count 1/2) for each row of image ``weights``; nan without both classes."""
    unique, inverse = np.unique(scores, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(scores)), (np.arange(len(scores)), inverse)),
                               shape=(len(scores), len(unique)))
    pos = np.asarray((onehot.T @ (weights * positive).T).T)     # replicates x distinct scores
    neg = np.asarray((onehot.T @ (weights * ~positive).T).T)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence among equal-width bins (lo, hi] over (0, 1]."""
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def _plain(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _validate(y_true, probs, patient_ids, classes: list[str]):
    probs = np.asarray(probs, dtype=np.float64)
    K = len(classes)
    if K < 2:
        raise ValueError(f"need at least two classes, got {classes}")
    if probs.ndim != 2 or probs.shape[1] != K:
        raise ValueError(f"probs must be N x {K} (one column per class {classes}); got shape {probs.shape}")
    if not np.isfinite(probs).all() or (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be probabilities: non-negative rows that sum to 1 (apply softmax to logits)")
    y = np.asarray(y_true)
    if y.dtype.kind in "USO":
        unknown = sorted(set(y.tolist()) - set(classes))
        if unknown:
            raise ValueError(f"unknown class names in y_true: {unknown}; classes are {classes}")
        y = np.array([classes.index(v) for v in y.tolist()], dtype=np.int64)
    if y.ndim != 1 or len(y) != len(probs) or len(y) == 0:
        raise ValueError(f"y_true must hold one label per row of probs ({len(probs)}); got shape {y.shape}")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= K:
        raise ValueError(f"y_true must be class indices 0..{K - 1} or class names {classes}")
    patients = np.asarray(patient_ids)
    if patients.shape != (len(y),):
        raise ValueError(f"patient_ids must hold one id per image ({len(y)}); got shape {patients.shape}")
    return y.astype(np.int64), probs, patients.astype(str)
