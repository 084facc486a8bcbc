"""``python -m core phantom``: write a phantom set (and optionally a contact sheet)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.data.phantom import FORMATS, PhantomCase, PhantomError, contact_sheet, write_phantoms


def configure_phantom(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created; must not hold a set)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients (one curvature each)")
    parser.add_argument("--images-per-patient", type=int, default=1, help="images per patient (pose/exposure vary)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same files")
    parser.add_argument("--size", type=int, default=1024, help="image height in pixels (width is 80-100 %% of it)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    parser.add_argument("--format", dest="formats", action="append", choices=FORMATS, default=[],
                        help="extra layout to write (repeatable)")
    parser.add_argument("--sigmoid-fraction", type=float, default=0.0,
                        help="share of patients with an S-shaped curve (CSXA grades 3/4)")
    parser.add_argument("--dicom-photometric", choices=("MONOCHROME2", "MONOCHROME1"), default="MONOCHROME2")
    parser.add_argument("--overwrite", action="store_true", help="replace a phantom set already in --out")
    parser.add_argument("--contact-sheet", type=Path, help="also write a class x facing contact sheet PNG here")


def run_phantom(args: argparse.Namespace) -> int:
    total = args.patients * args.images_per_patient
    every = max(1, total // 20)

    def report(done: int, total: int, case: PhantomCase) -> None:
        if done % every == 0 or done == total:
            print(f"[{done}/{total}] {case.patient_id} {case.curvature_class:<12} Cobb {case.cobb_c2c7:+6.1f} deg "
                  f"facing {case.facing}", flush=True)

    try:
        summary = write_phantoms(args.out, args.patients, args.images_per_patient, args.seed, args.size,
                                 args.formats, args.bit_depth, report, sigmoid_fraction=args.sigmoid_fraction,
                                 dicom_photometric=args.dicom_photometric, overwrite=args.overwrite)
        if args.contact_sheet:
            contact_sheet(args.contact_sheet, args.seed)
    except PhantomError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    classes = ", ".join(f"{cls} {n}" for cls, n in summary["classes"].items())
    print(f"wrote {summary['images']} images of {summary['patients']} patients to {summary['out']} "
          f"in {summary['seconds']} s")
    print(f"classes: {classes}; facing: {summary['facing']}; C7 hidden by shoulders: {summary['c7_hidden']}")
    for name, count in summary["files"].items():
        print(f"  {name}: {count} files")
    return 0
