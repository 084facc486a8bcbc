"""How unlike the training films a film is: the out-of-distribution (OOD) score every prediction carries.

A classifier's temperature is fitted on phantoms and says nothing about a film unlike them: a network answers
"100 %" for a photograph. So every trained classifier carries a reference of its own training data, and a
prediction is scored against it and against what the other two models report.

Components, each a ratio to its own threshold (1.0 = the edge of what the training films look like):

- ``features``: Mahalanobis distance of the classifier's penultimate features to its training crops, divided by
  the distance that 97.5 % of held-out validation crops stay under (:class:`FeatureReference`). The covariance
  is Ledoit-Wolf shrunk (a few hundred crops, 512 features) and stored as its top principal directions plus one
  residual variance (probabilistic PCA), so the checkpoint carries ~100 kB, not a 512 x 512 matrix.
- ``image``: the same distance on 22 statistics of the crop itself (:func:`crop_statistics`: intensity quantiles,
  edge strength, the power spectrum's bands, saturated share). Needed beside the features: a network maps some
  inputs it never saw (noise, flat images) close to its features' mean, where no feature distance can see them;
  their pixels are nothing like a radiograph's.
- ``landmarks``: the share of the 23 landmark heatmaps under the point-confidence threshold, divided by
  ``LANDMARK_MISSING_LIMIT`` (C7 hidden by the shoulders alone is 4/23: well inside).
- ``detector``: ``NOT_FOUND_RATIO`` when a detector is in the setup and found no cervical spine, else 0.

``ood_score`` is the largest ratio, capped at ``MAX_SCORE``; over 1.0 the film is out of distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# of held-out in-distribution distances: each component's threshold; two components at 2.5 % each keep the
# union near 5 % of in-distribution films
QUANTILE = 0.975
COMPONENTS = 64  # principal directions kept of the shrunk covariance
LANDMARK_MISSING_LIMIT = 0.5  # more than half the points unsure: the landmark model does not see a spine
NOT_FOUND_RATIO = 2.0  # a detector that finds no spine: clearly over the edge, whatever the other evidence
MAX_SCORE = 10.0  # beyond this the number only says "nothing like the training films"
MAX_PROBABILITY_FLAGGED = 0.9  # a flagged film never shows a class above this


class OodReferenceError(ValueError):
    """Features that cannot make a reference (too few, wrong shape, not finite)."""


@dataclass
class FeatureReference:
    """Mean, principal directions and variances of training features, and the held-out threshold."""

    mean: np.ndarray          # (D,)
    directions: np.ndarray    # (K, D) orthonormal rows
    variances: np.ndarray     # (K,)
    residual_variance: float  # mean variance of the D - K directions left out
    threshold: float          # distance that QUANTILE of the validation features stay under
    quantile: float = QUANTILE
    n_train: int = 0
    n_val: int = 0

    def distance(self, features) -> np.ndarray:
        """Mahalanobis distance per row, divided by sqrt(D) so it reads the same at any feature width."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if x.shape[1] != self.mean.shape[0]:
            raise OodReferenceError(f"features have {x.shape[1]} columns, the reference {self.mean.shape[0]}")
        x = x - self.mean
        along = x @ self.directions.T
        residual = np.maximum((x ** 2).sum(1) - (along ** 2).sum(1), 0.0)
        d2 = (along ** 2 / self.variances).sum(1) + residual / self.residual_variance
        return np.sqrt(d2 / x.shape[1])

    def ratio(self, features) -> np.ndarray:
        """Distance over the threshold: above 1 is further out than ``quantile`` of held-out in-distribution crops."""
        return self.distance(features) / self.threshold

    def to_meta(self) -> dict:
        """Plain lists for a checkpoint's meta (``torch.load(weights_only=True)`` reads them back)."""
        return {"method": "mahalanobis-ledoitwolf-ppca", "mean": self.mean.astype(np.float32).tolist(),
                "directions": self.directions.astype(np.float32).tolist(),
                "variances": self.variances.tolist(), "residual_variance": float(self.residual_variance),
                "threshold": float(self.threshold), "quantile": float(self.quantile),
                "n_train": int(self.n_train), "n_val": int(self.n_val)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> "FeatureReference | None":
        if not meta:
            return None
        return cls(np.asarray(meta["mean"], np.float64), np.asarray(meta["directions"], np.float64),
                   np.asarray(meta["variances"], np.float64), float(meta["residual_variance"]),
                   float(meta["threshold"]), float(meta.get("quantile", QUANTILE)), int(meta.get("n_train", 0)),
                   int(meta.get("n_val", 0)))


def _checked(features, what: str, minimum: int) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < minimum:
        raise OodReferenceError(f"{what}: need at least {minimum} feature rows, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise OodReferenceError(f"{what}: features are not all finite")
    return x


def fit_reference(train_features, val_features, quantile: float = QUANTILE, components: int = COMPONENTS,
                  cross_fit: int = 0, cross_fit_rows=None, groups=None) -> FeatureReference:
    """The reference of ``train_features`` (N x D) with its threshold fitted on held-out ``val_features``.

    The threshold comes from held-out data, not training: training crops sit closer to their own mean than any
    new film does, so a training quantile would flag far more new in-distribution films than meant.
    ``cross_fit`` = K > 1 adds each training row's distance to a reference fitted without its fold: more held-out
    rows for the threshold's tail (a 97.5 % quantile of 72 validation crops is nearly their maximum). Only for
    values that do not come from the model the rows trained (pixel statistics, not a network's features).
    ``cross_fit_rows`` (aligned with ``train_features``): what each held-out fold is scored on instead of its own
    rows, e.g. the same crops framed as a prediction frames them. ``groups`` (e.g. patient ids, aligned too) keep a
    group within one fold: a patient's other films in the fitted folds would make its held-out one look closer
    than a new patient's. (On the full demo both moved the pixel-statistics threshold only from 1.26 to 1.29.)
    """
    if not 0.5 <= quantile < 1.0:
        raise OodReferenceError(f"quantile must lie in [0.5, 1), got {quantile}")
    train = _checked(train_features, "training", 3)
    val = _checked(val_features, "validation", 1)
    reference = _fitted(train, components, quantile, len(val))
    held_out = [reference.distance(val)]
    if cross_fit > 1 and len(train) >= 2 * cross_fit and (groups is None or len(set(groups)) >= 2):
        scored = train if cross_fit_rows is None else _checked(cross_fit_rows, "cross-fit", len(train))
        if scored.shape != train.shape:
            raise OodReferenceError(f"cross-fit rows have shape {scored.shape}, the training rows {train.shape}")
        from sklearn.model_selection import GroupKFold

        groups = np.arange(len(train)) if groups is None else np.asarray(groups)
        if len(groups) != len(train):
            raise OodReferenceError(f"{len(groups)} groups for {len(train)} training rows")
        for fitted, held in GroupKFold(n_splits=min(cross_fit, len(set(groups.tolist())))).split(train, groups=groups):
            held_out.append(_fitted(train[fitted], components, quantile, 0).distance(scored[held]))
    reference.threshold = max(float(np.quantile(np.concatenate(held_out), quantile)), 1e-9)
    return reference


def _fitted(train: np.ndarray, components: int, quantile: float, n_val: int) -> FeatureReference:
    from sklearn.covariance import LedoitWolf

    covariance = LedoitWolf().fit(train).covariance_
    values, vectors = np.linalg.eigh(covariance)  # ascending
    values, vectors = values[::-1], vectors[:, ::-1]
    k = int(min(components, train.shape[1] - 1, len(train) - 1))
    floor = max(float(values[0]) * 1e-6, 1e-12)  # shrinkage keeps eigenvalues positive; guard against round-off
    residual = max(float(values[k:].mean()), floor)
    return FeatureReference(train.mean(0), vectors[:, :k].T.copy(), np.maximum(values[:k], floor), residual,
                            1.0, quantile, len(train), n_val)


STATISTICS_SIDE = 64  # crops are resampled to this before their statistics: the same at any input size
_BANDS = (1, 2, 4, 8, 16, 32)  # radial frequency band edges, cycles per crop side


def crop_statistics(crops) -> np.ndarray:
    """``N x 22`` statistics of classifier crops (``N x S x S`` or ``S x S``, [0, 1]): what a radiograph's pixels
    look like regardless of any network: intensity quantiles, mean, spread, dark and saturated shares, edge
    strength, local contrast and the power spectrum's share per frequency band."""
    from scipy import ndimage

    batch = np.asarray(crops, dtype=np.float64)
    if batch.ndim == 2:
        batch = batch[None]
    rows = []
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(STATISTICS_SIDE), np.fft.fftfreq(STATISTICS_SIDE))) * STATISTICS_SIDE
    for crop in batch:
        image = ndimage.zoom(crop, STATISTICS_SIDE / np.array(crop.shape), order=1)[:STATISTICS_SIDE, :STATISTICS_SIDE]
        gradient = np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)) / 8
        local = np.sqrt(np.maximum(ndimage.uniform_filter(image ** 2, 5) - ndimage.uniform_filter(image, 5) ** 2, 0))
        power = np.abs(np.fft.fft2(image - image.mean())) ** 2
        total = max(float(power.sum()), 1e-12)
        bands = [float(power[(radius >= lo) & (radius < hi)].sum()) / total for lo, hi in zip((0,) + _BANDS, _BANDS)]
        rows.append([*np.quantile(image, [0.05, 0.25, 0.5, 0.75, 0.95]), image.mean(), image.std(),
                     float(np.mean(image < 0.02)), float(np.mean(image > 0.98)),
                     gradient.mean(), *np.quantile(gradient, [0.5, 0.9, 0.99]), local.mean(), local.std(),
                     *np.log10(np.asarray(bands) + 1e-6), float(np.abs(np.diff(image, axis=1)).mean())])
    return np.asarray(rows, dtype=np.float64)


@dataclass
class OodResult:
    score: float | None             # the largest component ratio (capped), None when nothing could be scored
    flagged: bool                   # out of distribution: some component over 1
    components: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)


def assess(feature_ratio: float | None, landmark_confidence=None, point_threshold: float | None = None,
           detector_in_setup: bool = False, box_found: bool = True, image_ratio: float | None = None) -> OodResult:
    """Combine the components (see the module docstring) into one score and the plain reasons behind a flag."""
    components: dict[str, float] = {}
    reasons: list[str] = []
    if feature_ratio is not None and np.isfinite(feature_ratio):
        components["features"] = float(feature_ratio)
        if feature_ratio > 1:
            reasons.append(f"the classifier's features are {feature_ratio:.1f}x further from its training films "
                           f"than nearly all held-out films")
    if image_ratio is not None and np.isfinite(image_ratio):
        components["image"] = float(image_ratio)
        if image_ratio > 1:
            reasons.append(f"the crop's pixels (contrast, edges, texture) are {image_ratio:.1f}x further from the "
                           f"training films' than nearly all held-out films")
    if landmark_confidence is not None and point_threshold is not None:
        confidence = np.asarray(landmark_confidence, dtype=float)
        unsure = float(np.mean(confidence < point_threshold)) if confidence.size else 1.0
        components["landmarks"] = unsure / LANDMARK_MISSING_LIMIT
        if components["landmarks"] > 1:
            reasons.append(f"the landmark model is unsure of {unsure:.0%} of the points")
    if detector_in_setup:
        components["detector"] = 0.0 if box_found else NOT_FOUND_RATIO
        if not box_found:
            reasons.append("the detector found no cervical spine")
    if not components:
        return OodResult(None, False, {}, [])
    score = min(max(components.values()), MAX_SCORE)
    return OodResult(round(score, 4), score > 1.0, {k: round(min(v, MAX_SCORE), 4) for k, v in components.items()},
                     reasons)


def cap_probabilities(probabilities: Mapping[str, float], cap: float = MAX_PROBABILITY_FLAGGED) -> dict[str, float]:
    """Probabilities pulled towards uniform until the top one is at most ``cap``; order and sum kept.

    For a flagged film: the network's calibration does not hold there, so no class may look certain.
    """
    values = np.asarray(list(probabilities.values()), dtype=float)
    top, uniform = float(values.max()), 1.0 / len(values)
    if top <= cap or top <= uniform:
        return dict(probabilities)
    keep = (cap - uniform) / (top - uniform)  # the mix with uniform whose top is exactly cap
    mixed = keep * values + (1 - keep) * uniform
    return {name: float(v) for name, v in zip(probabilities, mixed)}
