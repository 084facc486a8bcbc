"""Model-driven labeling: pre-annotation drafts and "most uncertain first" scores.

A draft is what the promoted detector, landmark model and classifier (``core.inference.pipeline.Predictor``) say
about a film: box, 23 points, class. The annotator accepts or edits it; ``core.data.labels.save`` records the draft
and how far each point moved. Uncertainty for active learning is the classifier's normalised entropy averaged with
(1 - mean landmark confidence); without a landmark model, the entropy alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from core import settings
from core.data.imaging import ImageReadError, Radiograph, read_image
from core.data.store import AnnotationStore, ImageRecord
from core.inference.pipeline import Predictor


@dataclass
class Draft:
    curvature_class: str
    probabilities: dict[str, float]
    roi_box: list[float] | None              # None when no detector or landmark model found the spine
    landmarks: np.ndarray | None             # (23, 2) image pixels
    landmark_confidence: np.ndarray | None   # (23,) in [0, 1]
    models: dict[str, str]                   # which models made it (checkpoint paths under the workspace)
    notes: list[str] = field(default_factory=list)
    ood_score: float | None = None           # the pipeline's out-of-distribution score (1 = its threshold)

    @property
    def uncertainty(self) -> float:
        """0 sure .. 1 lost: the mean of the class entropy, the landmarks' unsureness and how unlike the training
        films this one is (the OOD score over twice its threshold). The entropy alone misses the worst films: the
        classifier is often most sure on a film unlike any it was trained on."""
        parts = [class_entropy(self.probabilities)]
        if self.landmark_confidence is not None:
            parts.append(1.0 - float(np.clip(np.mean(self.landmark_confidence), 0, 1)))
        elif self.models.get("landmarks"):  # a landmark model that found no spine is as unsure as it gets
            parts.append(1.0)
        if self.ood_score is not None:
            parts.append(float(np.clip(self.ood_score / 2, 0, 1)))
        return float(np.mean(parts))

    def record(self) -> dict:
        """What the store keeps with a reading that started from this draft."""
        return {"models": dict(self.models), "curvature_class": self.curvature_class,
                "probabilities": {k: round(float(v), 4) for k, v in self.probabilities.items()},
                "ood_score": None if self.ood_score is None else round(float(self.ood_score), 4),
                "roi_box": None if self.roi_box is None else [round(float(v), 2) for v in self.roi_box],
                "landmarks": None if self.landmarks is None else
                [[None if not math.isfinite(v) else round(float(v), 2) for v in row] for row in self.landmarks.tolist()]}


def class_entropy(probabilities: Mapping[str, float]) -> float:
    """Shannon entropy of the class probabilities over log(number of classes): 0 sure, 1 uniform."""
    p = np.clip(np.asarray(list(probabilities.values()), dtype=float), 1e-12, 1.0)
    p = p / p.sum()
    return float(-(p * np.log(p)).sum() / math.log(len(p))) if len(p) > 1 else 0.0


def drafter() -> Predictor:
    """The promoted models as one Predictor; ModelMissing (a ValueError with advice) when no classifier is promoted."""
    return Predictor()


def _relative(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(settings.home().resolve()))
    except ValueError:
        return str(path)


def make_draft(predictor: Predictor, source: Any, name: str | None = None,
               annotator_box: Sequence[float] | None = None) -> Draft:
    """One film's draft: the pipeline's class, box and points, plus the landmark model's per-point confidence
    (the pipeline's Prediction does not carry it, so the landmark model reads the same window once more).

    ``annotator_box``: the box the annotator drew. When the detector finds none, the landmark model reads this box
    instead (the draft's own box stays None: the box is the annotator's, not the model's)."""
    radiograph = source if isinstance(source, Radiograph) else read_image(source, name=name)
    prediction = predictor.predict(radiograph, name=name, cam_method=None)
    box = None if prediction.box_source == "whole image" else [float(v) for v in prediction.roi_box]
    landmarks, confidence, notes = prediction.landmarks, None, list(prediction.notes)
    model = predictor.landmark_model
    read_in = box if prediction.box_source == "detector" else None
    if model is not None and prediction.box_source != "detector" and annotator_box is not None:
        read_in = [float(v) for v in annotator_box]
        # no confidence floor: the annotator asked for points in this box; how sure the model is stays recorded
        located = model.locate(radiograph.pixels, read_in, 0.0)
        landmarks = None if located is None else np.asarray(located[0], dtype=float)
        if located is not None:
            notes.append(f"the landmark model read the box you drew (mean confidence {np.mean(located[1]):.2f})")
    if model is not None and landmarks is not None:
        located = model.locate(radiograph.pixels, read_in, 0.0)
        confidence = None if located is None else np.asarray(located[1], dtype=float)
    return Draft(curvature_class=prediction.curvature_class, probabilities=dict(prediction.probabilities),
                 roi_box=box, landmarks=landmarks, landmark_confidence=confidence,
                 models={"classifier": _relative(predictor.classifier_path), "detector": _relative(predictor.detector_path),
                         "landmarks": _relative(predictor.landmarks_path)},
                 notes=notes, ood_score=prediction.ood_score)


def image_file(image: ImageRecord) -> Path:
    return settings.home() / image.path


def draft_for_image(image_id: int, *, annotator_box: Sequence[float] | None = None, predictor: Predictor | None = None,
                    store: AnnotationStore | None = None) -> Draft:
    own = store is None
    store = store or AnnotationStore()
    try:
        image = store.image(int(image_id))
    finally:
        if own:
            store.close()
    return make_draft(predictor or drafter(), image_file(image), name=Path(image.path).name, annotator_box=annotator_box)


def uncertainty_scores(dataset: str, image_ids: Iterable[int] | None = None, *, predictor: Predictor | None = None,
                       store: AnnotationStore | None = None) -> dict[int, float]:
    """Image id -> uncertainty (0 sure .. 1 lost) for the queue's "most uncertain first"; unreadable films are left
    out (the queue puts unscored images last)."""
    predictor = predictor or drafter()
    own = store is None
    store = store or AnnotationStore()
    try:
        images = store.images(dataset)
    finally:
        if own:
            store.close()
    wanted = None if image_ids is None else {int(i) for i in image_ids}
    scores = {}
    for image in images:
        if wanted is not None and image.image_id not in wanted:
            continue
        try:
            scores[image.image_id] = round(make_draft(predictor, image_file(image)).uncertainty, 4)
        except (ImageReadError, OSError):
            continue
    return scores

