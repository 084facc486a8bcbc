"""``python -m core labels``: the labeling queue, progress, the models' drafts, saving, review, agreement, export.

It needs the store (data), the agreement statistics (evaluation) and the models' drafts (inference).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.data import exports, labels
from core.data.accounts import SHELL
from core.data.measure import read_labelme
from core.evaluation.agreement import team_report
from core.inference.drafts import draft_for_image, uncertainty_scores
from core.settings import CLASSES


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
