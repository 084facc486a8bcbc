"""Model-driven labeling: pre-annotation drafts, "most uncertain first" scores, and the ``labels`` command.

A draft is what the promoted detector, landmark model and classifier (``core.inference.pipeline.Predictor``) say
about a film: box, 23 points, class. The annotator accepts or edits it; ``core.data.labels.save`` records the draft
and how far each point moved. Uncertainty for active learning is the classifier's normalised entropy averaged with
(1 - mean landmark confidence); without a landmark model, the entropy alone.

The ``labels`` command lives here because it needs the store (data), the agreement statistics (evaluation) and the
models (inference): this is the lowest layer that sees all three.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from core import settings
from core.settings import CLASSES
from core.data.accounts import SHELL
from core.data import exports, labels
from core.data.imaging import ImageReadError, Radiograph, read_image
from core.data.store import AnnotationStore, ImageRecord
from core.inference.pipeline import ModelMissing, Predictor


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


# ---------------------------------------------------------------- CLI: python -m core labels ...

def configure_labels(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True)
    queue = commands.add_parser("queue", help="the images an annotator works through")
    queue.add_argument("--dataset", required=True)
    queue.add_argument("--annotator", required=True)
    queue.add_argument("--filter", choices=list(labels.FILTERS), default="unlabeled")
    queue.add_argument("--uncertain", action="store_true", help="most uncertain first, by the promoted models")
    queue.add_argument("--limit", type=int, help="show at most this many")
    queue.add_argument("--json", action="store_true")
    progress = commands.add_parser("progress", help="labeled / total, per class")
    progress.add_argument("--dataset", required=True)
    draft = commands.add_parser("draft", help="the promoted models' pre-annotation of one image")
    draft.add_argument("image_id", type=int)
    save = commands.add_parser("save", help="save a reading (one new history row)")
    save.add_argument("image_id", type=int)
    save.add_argument("--annotator", required=True)
    save.add_argument("--class", dest="curvature_class", choices=CLASSES)
    save.add_argument("--box", help="x1,y1,x2,y2 in image pixels")
    save.add_argument("--landmarks", type=Path, help="a Labelme JSON with the 23 CSXA points")
    save.add_argument("--from-draft", action="store_true", help="start from the models' draft: fields not given "
                                                                "come from it, and the store records it")
    save.add_argument("--note")
    review = commands.add_parser("review", help="accept, fix or reject a label row")
    review.add_argument("label_id", type=int)
    review.add_argument("--reviewer", required=True)
    review.add_argument("--verdict", choices=("accept", "fix", "reject"), required=True)
    review.add_argument("--comment")
    review.add_argument("--class", dest="curvature_class", choices=CLASSES, help="fix: the corrected class")
    review.add_argument("--box", help="fix: the corrected box x1,y1,x2,y2")
    agreement = commands.add_parser("agreement", help="per-annotator counts and times, kappa, ICC, Bland-Altman, "
                                                      "landmark distance, disagreements")
    agreement.add_argument("--dataset", required=True)
    agreement.add_argument("--json", action="store_true")
    export_parser = commands.add_parser("export", help="export the dataset's current labels")
    export_parser.add_argument("kind", choices=list(exports.EXPORT_KINDS))
    export_parser.add_argument("--dataset", required=True)
    export_parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")


def _box(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--box is x1,y1,x2,y2 (four numbers), got {text!r}") from None


def run_labels(args: argparse.Namespace) -> int:
    from core.evaluation.agreement import team_report

    try:
        if args.action == "queue":
            scores = uncertainty_scores(args.dataset) if args.uncertain else None
            items = labels.queue(args.dataset, args.annotator, args.filter, scores=scores)[:args.limit]
            for item in items:
                row = {"image_id": item.image_id, "path": item.path, "patient_id": item.patient_id,
                       "annotators": list(item.annotators), "uncertainty": item.uncertainty,
                       "rejection": item.rejection}
                print(json.dumps(row) if args.json else
                      f"{item.image_id}\t{item.path}\t{','.join(item.annotators) or '-'}"
                      + ("" if item.uncertainty is None else f"\tuncertainty {item.uncertainty:.3f}")
                      + ("" if item.rejection is None else f"\t{item.rejection}"))
        elif args.action == "progress":
            done = labels.progress(args.dataset)
            print(f"{done.labeled} / {done.total} labeled ({done.fraction:.0%}); "
                  + ", ".join(f"{k} {v}" for k, v in done.per_class.items())
                  + f"; boxes {done.boxes}, landmarks {done.landmarks}")
        elif args.action == "draft":
            found = draft_for_image(args.image_id)
            print(json.dumps(found.record() | {"uncertainty": round(found.uncertainty, 4), "notes": found.notes}))
        elif args.action == "save":
            landmarks = None
            if args.landmarks is not None:
                from core.data.measure import read_labelme

                landmarks = read_labelme(args.landmarks).landmarks
            draft = draft_for_image(args.image_id) if args.from_draft else None
            label_id = labels.save(
                args.image_id, annotator=args.annotator,
                curvature_class=args.curvature_class or (draft.curvature_class if draft else None),
                roi_box=_box(args.box) or (draft.roi_box if draft else None),
                landmarks=landmarks if landmarks is not None else (draft.landmarks if draft else None),
                note=args.note, draft=None if draft is None else draft.record(), actor=SHELL)
            print(f"saved label {label_id} for image {args.image_id}")
        elif args.action == "review":
            review_id = labels.review(args.label_id, reviewer=args.reviewer, verdict=args.verdict, comment=args.comment,
                                      curvature_class=args.curvature_class, roi_box=_box(args.box), actor=SHELL)
            print(f"review {review_id}: label {args.label_id} {args.verdict}")
        elif args.action == "agreement":
            report = team_report(args.dataset)
            print(json.dumps(report.as_dict(), default=str) if args.json else report.format())
        elif args.action == "export":
            print(labels.export(args.kind, args.dataset, args.out, actor=SHELL).format())
    except (ValueError, KeyError, OSError) as error:  # ModelMissing, DatasetError, LandmarkError are ValueErrors
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
