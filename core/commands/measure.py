"""``python -m core measure``: Cobb angles, CCI, arc depth and rule class from Labelme landmark files."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from core.data.imaging import ImageReadError, read_image
from core.data.measure import (LabelmeRecord, LandmarkError, RuleThresholds, measure_landmarks, read_facing,
                               read_labelme)


def configure_measure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="Labelme JSON files with the 23 CSXA landmarks")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--facing", choices=("left", "right"),
                        help="image side the face is on (default: read from the film the JSON names, beside C3-C6; "
                             "from the C2-over-C7 lean when the film is absent or unclear)")
    parser.add_argument("--pixel-spacing", type=float, help="mm per pixel, for arc depth in mm")
    parser.add_argument("--normal-min", type=float, help="Cobb C2-C7 at or above which the class is normal")
    parser.add_argument("--reversed-max", type=float, help="Cobb C2-C7 at or below which the class is reversed")


def _film_of(json_path: Path, record: LabelmeRecord) -> np.ndarray | None:
    """The film a Labelme file belongs to (its ``imagePath``, else the same stem beside it), or None."""
    names = [record.image_path] if record.image_path else []
    candidates = [json_path.parent / Path(name).name for name in names]
    candidates += [json_path.with_suffix(suffix) for suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return read_image(candidate).pixels
            except ImageReadError:
                return None
    return None


def run_measure(args: argparse.Namespace) -> int:
    base = RuleThresholds.from_env()
    thresholds = RuleThresholds(
        normal_min_deg=base.normal_min_deg if args.normal_min is None else args.normal_min,
        reversed_max_deg=base.reversed_max_deg if args.reversed_max is None else args.reversed_max,
    )
    failures = 0
    for path in args.files:
        try:
            record = read_labelme(path)
            facing = read_facing(_film_of(path, record), record.landmarks, args.facing)
            result = measure_landmarks(record.landmarks, facing.facing, args.pixel_spacing, thresholds)
            if facing.source == "lean":
                result.notes.append(f"the patient {facing.describe()}")
        except LandmarkError as error:
            failures += 1
            message = str(error) if str(error).startswith(path.name) else f"{path.name}: {error}"
            print(json.dumps({"file": str(path), "error": message}) if args.json else f"{path}: error: {message}")
            continue
        row = {"file": str(path), **result.as_dict(), "facing_source": facing.source}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{path}: Cobb C2-C7 {result.cobb_c2c7:.1f} deg, C2-C6 {result.cobb_c2c6:.1f} deg, "
                  f"CCI {result.cci:.1f} %, arc depth {result.arc_depth_px:.1f} px -> {result.rule_class}; "
                  f"patient {facing.describe()}")
    return 1 if failures else 0
