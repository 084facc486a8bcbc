"""``python -m core import KIND SOURCE``: one import from the command line, its report printed."""
from __future__ import annotations

import argparse
from pathlib import Path

from core.data.datasets import DatasetError
from core.data.importers.dispatch import IMPORTERS, _import_kind, import_archive


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
    from core.data.archive import ArchiveError

    from sqlalchemy.exc import SQLAlchemyError

    source = Path(args.source)
    options = dict(dataset=args.dataset, annotator=args.annotator, sigmoid=args.sigmoid, resplit=args.resplit)
    try:
        if source.suffix.lower() == ".zip" and not source.is_dir():
            report = import_archive(args.kind, source, args.labels, **options)
        else:
            report = _import_kind(args.kind, source, args.labels, **options)
    except ArchiveError as error:
        print(f"error: {source.name} refused: {error}")
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
