"""The SVM baseline: HOG features of the resized crop, an RBF SVC, Platt (sigmoid) calibration.

Why HOG: the curvature class is the shape of the column's anterior and posterior borders, i.e. where
the bone edges run and at which angle. Histograms of oriented gradients describe exactly that and are the
classic descriptor in front of an SVM; downsampled pixels + PCA describe brightness instead, which
exposure changes as much as curvature does. HOG (Dalal & Triggs, unsigned orientations, bilinear
orientation votes, 2x2-cell blocks, L2-Hys) is the short numpy function below rather than
``skimage.feature.hog``: at 128 px with the same cells, blocks and norm, this one takes 2.1 ms per image
and scikit-image 0.26 takes 5.6 ms (one image per call, it does not batch; 2-core x86_64).

Probabilities come from ``CalibratedClassifierCV(SVC(class_weight="balanced"), method="sigmoid",
ensemble=False)`` (``SVC(probability=True)`` is deprecated in scikit-learn 1.9). The fitted model is saved
as one ``.npz`` of plain arrays plus a JSON header: the SVC's fitted arrays and the per-class sigmoid
parameters. Nothing is pickled, so loading a file never runs code from it. The header records the
scikit-learn version that wrote the arrays; a file from another major.minor series is refused, because
SVC's fitted attributes are private and change between minor releases (patch releases keep them).
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
import sklearn
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

FORMAT = "cervicurve-svm/2"  # /2 added the scikit-learn version to the header


def hog_features(images: np.ndarray, cell_size: int = 8, orientations: int = 9, block_size: int = 2) -> np.ndarray:
    """HOG descriptors of equally sized images: ``N x H x W`` -> ``N x D`` (float32)."""
    images = np.asarray(images, dtype=np.float32)
    n, height, width = images.shape
    cells_y, cells_x = height // cell_size, width // cell_size
    if min(cells_y, cells_x) < block_size:
        raise ValueError(f"images of {height}x{width} px are too small for {block_size}x{block_size} cells of {cell_size} px")
    gy, gx = np.gradient(images, axis=(1, 2))
    magnitude = np.hypot(gx, gy)
    # Unsigned orientation: an edge is the same edge whether bone is above or below it.
    position = (np.rad2deg(np.arctan2(gy, gx)) % 180.0) / (180.0 / orientations) - 0.5
    lower = np.floor(position)
    upper_share = (position - lower).astype(np.float32)
    lower = lower.astype(np.int64) % orientations
    upper = (lower + 1) % orientations
    crop = (slice(None), slice(0, cells_y * cell_size), slice(0, cells_x * cell_size))
    cells = np.empty((n, cells_y, cells_x, orientations), np.float32)
    for b in range(orientations):
        votes = magnitude * ((lower == b) * (1.0 - upper_share) + (upper == b) * upper_share)
        cells[..., b] = votes[crop].reshape(n, cells_y, cell_size, cells_x, cell_size).sum(axis=(2, 4))
    blocks = sliding_window_view(cells, (block_size, block_size), axis=(1, 2))
    blocks = blocks.reshape(n, cells_y - block_size + 1, cells_x - block_size + 1, -1)
    eps = 1e-5
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + eps ** 2)
    blocks = np.minimum(blocks, 0.2)  # L2-Hys: clip, then renormalise
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + eps ** 2)
    return blocks.reshape(n, -1).astype(np.float32)


class CurvatureSVM:
    """HOG + SVC with calibrated class probabilities; ``fit(images, labels)``, ``predict_proba(images)``.

    ``images``: float32 ``N x H x W`` in [0, 1] (or a sequence of 2-D arrays of any sizes); each is resized
    to ``image_size`` square. ``labels``: class indices ``0..num_classes-1``.
    """

    def __init__(self, num_classes: int = 3, image_size: int = 128, cell_size: int = 8, orientations: int = 9,
                 C: float = 1.0, calibration_folds: int = 3) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if image_size < 2 * cell_size:
            raise ValueError(f"image_size {image_size} must be at least two cells of {cell_size} px")
        self.num_classes = num_classes
        self.image_size = image_size
        self.cell_size = cell_size
        self.orientations = orientations
        self.C = C
        self.calibration_folds = calibration_folds
        self.svc_: SVC | None = None
        self.sigmoid_a_: np.ndarray | None = None   # one (a, b) per calibrated class, p = expit(-(a d + b))
        self.sigmoid_b_: np.ndarray | None = None

    # --- features --------------------------------------------------------------------------------------
    def features(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        arrays = [np.asarray(image, dtype=np.float32) for image in images]
        if not arrays:
            raise ValueError("no images given")
        for index, image in enumerate(arrays):
            if image.ndim != 2:
                raise ValueError(f"image {index} has shape {image.shape}; the SVM expects 2-D grayscale H x W images")
            if not np.isfinite(image).all():
                raise ValueError(f"image {index} contains NaN or infinite values")
        side = self.image_size
        resized = np.stack([
            image if image.shape == (side, side)
            else np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))
            for image in arrays])
        chunks = [hog_features(resized[i:i + 64], self.cell_size, self.orientations)
                  for i in range(0, len(resized), 64)]
        return np.concatenate(chunks)

    # --- fit / predict ---------------------------------------------------------------------------------
    def fit(self, images, labels) -> "CurvatureSVM":
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"got {len(images)} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be class indices 0..{self.num_classes - 1}")
        present, counts = np.unique(labels, return_counts=True)
        if len(present) < 2 or counts.min() < 2:
            raise ValueError("the SVM needs at least two classes with at least 2 images each "
                             f"(got counts {dict(zip(present.tolist(), counts.tolist()))})")
        calibrated = CalibratedClassifierCV(
            SVC(kernel="rbf", C=self.C, gamma="scale", class_weight="balanced"),
            method="sigmoid", ensemble=False, cv=int(min(self.calibration_folds, counts.min())))
        calibrated.fit(self.features(images), labels)
        fitted = calibrated.calibrated_classifiers_[0]
        self.svc_ = fitted.estimator
        self.sigmoid_a_ = np.array([c.a_ for c in fitted.calibrators], dtype=np.float64)
        self.sigmoid_b_ = np.array([c.b_ for c in fitted.calibrators], dtype=np.float64)
        return self

    def predict_proba(self, images) -> np.ndarray:
        """``N x num_classes`` probabilities; a class absent from training gets 0."""
        if self.svc_ is None:
            raise RuntimeError("the SVM is not fitted: call fit() or CurvatureSVM.load()")
        decision = self.svc_.decision_function(self.features(images))
        trained = self.svc_.classes_
        # Same arithmetic as scikit-learn's sigmoid-calibrated classifier (checked by a test).
        if len(trained) == 2:
            positive = expit(-(self.sigmoid_a_[0] * decision + self.sigmoid_b_[0]))
            proba = np.column_stack([1.0 - positive, positive])
        else:
            proba = expit(-(self.sigmoid_a_ * decision + self.sigmoid_b_))
            total = proba.sum(axis=1, keepdims=True)
            proba = np.divide(proba, total, out=np.full_like(proba, 1.0 / len(trained)), where=total != 0)
        proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
        full = np.zeros((len(proba), self.num_classes))
        full[:, trained] = proba
        return full

    def predict(self, images) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    # --- save / load: arrays and JSON, never pickle ----------------------------------------------------
    def to_bytes(self) -> bytes:
        if self.svc_ is None:
            raise RuntimeError("cannot save an SVM that is not fitted")
        arrays, scalars = {}, {}
        for name, value in vars(self.svc_).items():
            if isinstance(value, np.ndarray):
                if value.dtype == object:
                    raise TypeError(f"SVC attribute {name} holds Python objects; refusing to save it")
                arrays[f"svc.{name}"] = value
            elif isinstance(value, np.generic):
                arrays[f"svc.{name}"] = np.asarray(value)
            elif value is None or isinstance(value, (bool, int, float, str, tuple)):
                scalars[name] = list(value) if isinstance(value, tuple) else value
            else:
                raise TypeError(f"SVC attribute {name} is a {type(value).__name__}; cannot save it as data")
        header = {"format": FORMAT, "sklearn": sklearn.__version__, "config": self.config(), "svc": scalars,
                  "svc_params": {k: v for k, v in self.svc_.get_params().items() if k in scalars}}
        buffer = io.BytesIO()
        np.savez(buffer, header=np.array(json.dumps(header)), sigmoid_a=self.sigmoid_a_,
                 sigmoid_b=self.sigmoid_b_, **arrays)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "SVM data") -> "CurvatureSVM":
        """``source`` names the file in error messages."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{source} is not a CerviCurve SVM file ({error})") from error
        if header.get("format") != FORMAT:
            raise ValueError(f"{source} is not a CerviCurve SVM file of format {FORMAT!r} "
                             f"(format {header.get('format')!r}); retrain the SVM")
        written = str(header.get("sklearn"))
        if written.split(".")[:2] != sklearn.__version__.split(".")[:2]:
            raise ValueError(f"{source} was written by scikit-learn {written}, this is scikit-learn "
                             f"{sklearn.__version__}; SVC's fitted arrays differ between minor versions: "
                             f"retrain the SVM or install scikit-learn {'.'.join(written.split('.')[:2])}.x")
        model = cls(**header["config"])
        svc = SVC(**header["svc_params"])
        for name, value in header["svc"].items():
            setattr(svc, name, tuple(value) if isinstance(value, list) else value)
        for key, value in arrays.items():
            if key.startswith("svc."):
                setattr(svc, key[4:], value[()] if value.ndim == 0 else value)
        model.svc_ = svc
        model.sigmoid_a_, model.sigmoid_b_ = arrays["sigmoid_a"], arrays["sigmoid_b"]
        return model

    @classmethod
    def load(cls, path: str | Path) -> "CurvatureSVM":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SVM file not found: {path}")
        return cls.from_bytes(path.read_bytes(), str(path))

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "image_size": self.image_size, "cell_size": self.cell_size,
                "orientations": self.orientations, "C": self.C, "calibration_folds": self.calibration_folds}


def curvature_svm(num_classes: int = 3, in_channels: int = 1, image_size: int = 128, cell_size: int = 8,
                  orientations: int = 9, C: float = 1.0, calibration_folds: int = 3) -> CurvatureSVM:
    if in_channels != 1:
        raise ValueError(f"the SVM reads grayscale images only (in_channels=1), got in_channels={in_channels}")
    return CurvatureSVM(num_classes, image_size, cell_size, orientations, C, calibration_folds)
