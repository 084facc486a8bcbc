"""``python -m core import | export | split``: a dataset in, out, and cut into patient-grouped splits."""
from __future__ import annotations

import argparse
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from core.data.accounts import SHELL, authorize
from core.data.archive import ArchiveError
from core.data.datasets import DatasetError, freeze_test, kfold_splits, make_splits
from core.data.exports import export_coco, export_csv, export_folder, export_labelme, export_yolo
from core.data.importers import IMPORTERS, import_path
from core.data.measure import LANDMARK_CROP_MARGIN
from core.data.store import AnnotationStore, check_dataset_name

EXPORTERS = {"folder": export_folder, "csv": export_csv, "yolo": export_yolo, "coco": export_coco,
             "labelme": export_labelme}


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=IMPORTERS, help="layout of the source")
    parser.add_argument("source", type=Path,
                        help="folder (or CSV / COCO JSON / data.yaml), or a .zip of any of them")
    parser.add_argument("--labels", type=Path, help="COCO JSON, CSXA sheet, or a CSV manifest for DICOM files")
    parser.add_argument("--dataset", help="dataset name (default: the source folder's or the zip's name)")
    parser.add_argument("--sigmoid", choices=("skip", "measure"), default="skip",
                        help="CSXA sigmoid grades 3/4: skip them, or class them by their Cobb angle")
    parser.add_argument("--annotator", help="name recorded in the label history (default import:KIND)")
    parser.add_argument("--resplit", action="store_true",
                        help="when the manifest puts a patient in two splits, drop that patient's splits (then run "
                             "split) instead of refusing the import")


def run_import(args: argparse.Namespace) -> int:
    try:
        report = import_path(args.kind, args.source, args.labels, dataset=args.dataset, annotator=args.annotator,
                             sigmoid=args.sigmoid, resplit=args.resplit)
    except ArchiveError as error:
        print(f"error: {args.source.name} refused: {error}")
        return 2
    except (DatasetError, ValueError) as error:
        print(f"error: {error}")
        return 2
    except OSError as error:  # a full disk, a folder without write permission
        print(f"error: the import could not write to the workspace ({error}); nothing was imported")
        return 2
    except SQLAlchemyError as error:
        print(f"error: the annotation database refused the import ({' '.join(str(error).split())[:300]}); "
              "nothing was imported")
        return 2
    print(report.format())
    # Non-zero only when nothing at all came in: a bad entry among good ones is reported and skipped.
    return 1 if report.imported + report.updated + report.unchanged == 0 else 0


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=EXPORTERS)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    parser.add_argument("--task", choices=("detect", "landmarks"), default="detect", help="YOLO only")
    parser.add_argument("--max-side", type=int, help="YOLO only: shrink images so their longer side is at most this")
    parser.add_argument("--crop", choices=("roi",), help="YOLO landmarks only: export each image cropped to its ROI")
    parser.add_argument("--roi-margin", type=float, default=LANDMARK_CROP_MARGIN,
                        help="with --crop roi: widen the box by this fraction of its size on each side")


def run_export(args: argparse.Namespace) -> int:
    try:
        check_dataset_name(args.dataset)
        authorize(SHELL, "export", f"{args.kind} export of dataset {args.dataset!r} to {args.out}")
        if args.kind == "yolo":
            report = export_yolo(args.dataset, args.out, task=args.task, max_side=args.max_side, crop=args.crop,
                                 roi_margin=args.roi_margin)
        else:
            report = EXPORTERS[args.kind](args.dataset, args.out)
    except ValueError as error:  # DatasetError, a refused dataset name, an unreadable sheet
        print(f"error: {error}")
        return 2
    print(report.format())
    return 0


def configure_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test")
    parser.add_argument("--folds", type=int, help="also show K patient-grouped folds over train+val")
    parser.add_argument("--freeze-test", action="store_true",
                        help="freeze the test split after splitting: later splits never reshuffle it")
    parser.add_argument("--no-stratify", action="store_true",
                        help="deal patients by the fractions alone, ignoring class (a few films labeled for "
                             "landmarks, or with grades missing)")


def run_split(args: argparse.Namespace) -> int:
    try:
        fractions = [float(v) for v in str(args.fractions).split(",")]
    except ValueError:
        print(f"error: --fractions must be three numbers like 0.7,0.15,0.15, got {args.fractions!r}")
        return 2
    try:
        counts = make_splits(args.dataset, fractions, seed=args.seed, actor=SHELL, stratify=not args.no_stratify)
        print(f"splits of {args.dataset!r} (patient-grouped, "
              f"{'class-stratified, ' if not args.no_stratify else ''}seed {args.seed}):")
        for split, per_class in counts.items():
            print(f"  {split:<5} " + "  ".join(f"{name} {n}" for name, n in per_class.items()))
        with AnnotationStore() as store:
            frozen = store.test_frozen_at(args.dataset)
        if frozen is not None:
            print(f"test split frozen since {frozen:%Y-%m-%d %H:%M} UTC: kept as it was")
        elif args.freeze_test:
            frozen = freeze_test(args.dataset)
            print(f"test split frozen ({frozen:%Y-%m-%d %H:%M} UTC): later splits keep it as it is")
        if args.folds:
            for number, fold in enumerate(kfold_splits(args.dataset, args.folds, args.seed), start=1):
                print(f"  fold {number}: train {len(fold.train)}  val {len(fold.val)}")
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    return 0
