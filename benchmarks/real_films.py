"""The promoted models on real films with landmarks (CSXA layout): how well they find, point and measure.

    CERVICURVE_HOME=/tmp/ws .venv/bin/python benchmarks/real_films.py DIR [--label zero-shot] [--out benchmarks/results]

DIR holds films with Labelme JSON beside them (the same stem; CSXA's 23 named landmarks) and, optionally, CSXA's
sheet (``datasets.xlsx`` or ``.csv``) with the curvature grade. Any model can be named instead of the promoted one
(``--classifier``, ``--detector``, ``--landmarks``: a run id, run folder or checkpoint).

Per film: the box IoU against the landmarks' own box (``measure.roi_box_from_landmarks``), the mean point error in %
of the C2-C7 length (C2 centroid to the middle of C7's lower endplate; points the model was unsure of are left out,
as Predict leaves them out, and counted), the C2-C7 Cobb error against the same measurement on the official
landmarks (both signed with the film's facing), the rule class against the sheet's grade (1 normal, 2 straightened,
5 reversed; 3 and 4 are S-shapes, not one of the three), the facing found, the OOD flag and the confidence.
Overall: medians with 95 % bootstrap intervals, shares with Wilson intervals (few films: the intervals are wide).
Writes ``real_films_<label>.md``, ``.csv``, ``.json`` and a contact sheet ``real_films_<label>.png`` (the spine of
each film, official points green, the model's red). Cite the films' source wherever results appear (CSXA: Ran et
al., Sci Data 2024, doi 10.1038/s41597-024-03383-0).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRADE_CLASS = {1: "normal", 2: "straightened", 5: "reversed"}


def films(folder: Path) -> list[tuple[Path, Path]]:
    """(image, Labelme JSON) pairs under ``folder``: each JSON with an image of the same stem beside it."""
    pairs = []
    for json_path in sorted(folder.rglob("*.json")):
        image = next((p for p in sorted(json_path.parent.glob(json_path.stem + ".*"))
                      if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")), None)
        if image is not None:
            pairs.append((image, json_path))
    return pairs


def grades(folder: Path) -> dict[str, int | None]:
    """Image stem -> CSXA curvature grade, from the sheet when there is one."""
    from core.data.importers import csxa_case_number, read_csxa_sheet

    sheet = next((p for name in ("datasets.xlsx", "datasets.csv") for p in sorted(folder.rglob(name))), None)
    if sheet is None:
        return {}
    cases = read_csxa_sheet(sheet)
    out = {}
    for image, _ in films(folder):
        number = csxa_case_number(image.stem, cases)
        out[image.stem] = None if number is None else cases[number]["grade"]
    return out


def box_iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def c2c7_length(truth: np.ndarray) -> float:
    return float(np.linalg.norm(truth[0] - (truth[21] + truth[22]) / 2))


def point_errors_pct(predicted: np.ndarray | None, truth: np.ndarray) -> np.ndarray:
    """Per-landmark distance in % of C2-C7 (nan where the model gave no point)."""
    if predicted is None:
        return np.full(len(truth), np.nan)
    return np.linalg.norm(np.asarray(predicted, float) - truth, axis=1) / c2c7_length(truth) * 100.0


def evaluate_film(predictor, image: Path, json_path: Path, grade: int | None, facing_rule: str) -> tuple[dict, dict]:
    """One film: (table row, drawing data)."""
    from core.data.imaging import read_image
    from core.data.measure import measure_landmarks, read_facing, read_labelme, roi_box_from_landmarks

    record = read_labelme(json_path)
    truth = record.landmarks
    radiograph = read_image(image)
    width, height = radiograph.original_size
    facing = read_facing(radiograph.pixels, truth, None if facing_rule == "film" else facing_rule)
    truth_cobb = measure_landmarks(truth, facing=facing.facing).cobb_c2c7
    truth_box = roi_box_from_landmarks(truth, (width, height))
    started = time.perf_counter()
    result = predictor.predict(radiograph, name=image.name, cam_method=None)
    seconds = time.perf_counter() - started
    errors = point_errors_pct(result.landmarks, truth)
    m = result.measurements
    facing_found = getattr(result, "facing", None)  # older engines signed every angle by the lean alone
    cobb = m.cobb_c2c7 if m is not None and math.isfinite(m.cobb_c2c7) else None
    row = {
        "film": image.stem, "grade": grade, "true_class": GRADE_CLASS.get(grade), "truth_cobb": round(truth_cobb, 2),
        "truth_facing": facing.facing, "box_iou": round(box_iou(result.roi_box, truth_box), 3),
        "box_source": result.box_source,
        "point_error_pct": None if np.all(np.isnan(errors)) else round(float(np.nanmean(errors)), 2),
        "points_dropped": int(np.isnan(errors).sum()),
        "pred_cobb": None if cobb is None else round(cobb, 2),
        "cobb_error": None if cobb is None else round(cobb - truth_cobb, 2),
        "pred_facing": facing_found.facing if facing_found else (m.facing if m is not None else None),
        "facing_source": facing_found.source if facing_found else ("lean" if m is not None else None),
        "rule_class": None if m is None else m.rule_class, "network_class": result.curvature_class,
        "confidence": round(result.confidence, 3), "ood": bool(result.out_of_distribution),
        "ood_score": None if result.ood_score is None else round(float(result.ood_score), 3),
        "seconds": round(seconds, 2),
    }
    return row, {"image": radiograph.pixels, "truth": truth, "predicted": result.landmarks, "box": truth_box}


def median_ci(values, seed: int = 0) -> tuple[float | None, float | None, float | None]:
    from scipy.stats import bootstrap

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if len(values) == 0:
        return None, None, None
    if len(values) < 3 or np.ptp(values) == 0:
        return float(np.median(values)), None, None
    ci = bootstrap((values,), np.median, n_resamples=2000, method="percentile", random_state=seed).confidence_interval
    return float(np.median(values)), float(ci.low), float(ci.high)


def share_ci(hits: int, n: int) -> tuple[float | None, float | None, float | None]:
    from scipy.stats import binomtest

    if n == 0:
        return None, None, None
    ci = binomtest(hits, n).proportion_ci(method="wilson")
    return hits / n, float(ci.low), float(ci.high)


def summarise(rows: list[dict]) -> dict:
    cobb = [abs(r["cobb_error"]) for r in rows if r["cobb_error"] is not None]
    graded = [r for r in rows if r["true_class"] is not None]
    return {
        "films": len(rows),
        "point_error_pct_median": median_ci([r["point_error_pct"] for r in rows]),
        "cobb_abs_error_median": median_ci(cobb),
        "cobb_within_5deg": share_ci(sum(e <= 5 for e in cobb), len(rows)),  # a film with no angle counts as a miss
        "films_with_angle": len(cobb),
        "films_with_points": sum(r["point_error_pct"] is not None for r in rows),
        "box_iou_median": median_ci([r["box_iou"] for r in rows]),
        "box_iou_at_least_0.5": share_ci(sum(r["box_iou"] >= 0.5 for r in rows), len(rows)),
        "facing_right": share_ci(sum(r["pred_facing"] == r["truth_facing"] for r in rows if r["pred_facing"]),
                                 sum(1 for r in rows if r["pred_facing"])),
        "rule_class_matches_grade": share_ci(sum(r["rule_class"] == r["true_class"] for r in graded), len(graded)),
        "network_class_matches_grade": share_ci(sum(r["network_class"] == r["true_class"] for r in graded),
                                                len(graded)),
        "flagged_ood": share_ci(sum(r["ood"] for r in rows), len(rows)),
    }


def _fmt(triple, unit: str = "", pct: bool = False) -> str:
    value, low, high = triple
    if value is None:
        return "n/a"
    scale = 100.0 if pct else 1.0
    unit = " %" if pct else unit
    text = f"{value * scale:.1f}{unit}"
    return text + (f" [{low * scale:.1f}, {high * scale:.1f}]" if low is not None else "")


def contact_sheet(drawings: list[dict], rows: list[dict], path: Path, tile: int = 256) -> None:
    """Each film's spine (the official landmarks' box, widened), official points green, the model's red."""
    columns = min(6, max(1, len(drawings)))
    lines = 3
    text_h = 12 * lines + 4
    sheet = Image.new("RGB", (columns * tile, math.ceil(len(drawings) / columns) * (tile + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (d, row) in enumerate(zip(drawings, rows)):
        x1, y1, x2, y2 = d["box"]
        side = max(x2 - x1, y2 - y1) * 1.15
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        left, top = cx - side / 2, cy - side / 2
        pixels = np.clip(d["image"], 0, 1)
        crop = Image.fromarray((pixels * 255).astype(np.uint8)).crop(
            (int(left), int(top), int(left + side), int(top + side))).resize((tile, tile), Image.BILINEAR)
        ox, oy = (k % columns) * tile, (k // columns) * (tile + text_h)
        sheet.paste(crop.convert("RGB"), (ox, oy))
        scale = tile / side

        def dot(points, colour):
            if points is None:
                return
            for x, y in np.asarray(points, float):
                if math.isfinite(x) and math.isfinite(y):
                    px, py = ox + (x - left) * scale, oy + (y - top) * scale
                    draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)

        dot(d["truth"], (40, 200, 60))
        dot(d["predicted"], (230, 40, 40))
        cobb = "no angle" if row["pred_cobb"] is None else f"{row['pred_cobb']:+.1f}"
        text = [f"{row['film']}  IoU {row['box_iou']:.2f}",
                f"Cobb {row['truth_cobb']:+.1f} official, {cobb} ours",
                f"points {row['point_error_pct'] if row['point_error_pct'] is not None else 'n/a'} %"
                + ("  OOD" if row["ood"] else "")]
        for i, line in enumerate(text):
            draw.text((ox + 4, oy + tile + 2 + 12 * i), line, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def run(folder: Path, label: str, out: Path, facing_rule: str = "film", classifier=None, detector=None,
        landmarks=None) -> dict:
    from core.inference.pipeline import Predictor
    from core.inference.report import provenance

    predictor = Predictor(classifier, detector, landmarks)
    sheet_grades = grades(folder)
    rows, drawings = [], []
    started = time.time()
    for image, json_path in films(folder):
        row, drawing = evaluate_film(predictor, image, json_path, sheet_grades.get(image.stem), facing_rule)
        rows.append(row)
        drawings.append(drawing)
        print(json.dumps(row), flush=True)
    summary = summarise(rows)
    summary.update(label=label, folder=str(folder), seconds=round(time.time() - started, 1),
                   models=provenance(predictor), machine=f"{platform.machine()}, {os.cpu_count()} cores",
                   date=time.strftime("%Y-%m-%d"))
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"real_films_{label}"
    with open(stem.with_suffix(".csv"), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({"summary": summary, "films": rows}, indent=1, default=str))
    contact_sheet(drawings, rows, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(summary, rows), encoding="utf-8")
    return summary


def markdown(summary: dict, rows: list[dict]) -> str:
    head = ("| film | grade | official Cobb | ours | error | box IoU | point error (% C2-C7) | dropped | facing | "
            "rule class | network | OOD |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['film']} | {r['grade'] if r['grade'] is not None else '-'} | {r['truth_cobb']:+.1f} | "
        f"{'-' if r['pred_cobb'] is None else format(r['pred_cobb'], '+.1f')} | "
        f"{'-' if r['cobb_error'] is None else format(r['cobb_error'], '+.1f')} | {r['box_iou']:.2f} | "
        f"{'-' if r['point_error_pct'] is None else r['point_error_pct']} | {r['points_dropped']} | "
        f"{r['pred_facing'] or '-'} ({r['facing_source'] or '-'}) | {r['rule_class'] or '-'} | "
        f"{r['network_class']} {r['confidence']:.2f} | {'yes' if r['ood'] else 'no'} |\n" for r in rows)
    s = summary
    models = "; ".join(f"{k}: {v}" for k, v in (s.get("models") or {}).items()) if isinstance(s.get("models"), dict) \
        else str(s.get("models"))
    return (f"# Real films: {s['label']}\n\n"
            f"{s['films']} films from `{s['folder']}`, {s['date']}, {s['machine']}, {s['seconds']} s. "
            f"Models: {models}.\n\n"
            "Films: Cervical Spine X-ray Atlas (Ran et al., Sci Data 2024, doi 10.1038/s41597-024-03383-0), "
            "official landmarks and grades. Medians with 95 % bootstrap intervals, shares with Wilson intervals.\n\n"
            f"- median point error: {_fmt(s['point_error_pct_median'], ' % of C2-C7')} on "
            f"{s.get('films_with_points', s['films'])} films with points\n"
            f"- median |Cobb error|: {_fmt(s['cobb_abs_error_median'], ' deg')} on {s['films_with_angle']} films "
            f"with an angle\n"
            f"- angle within 5 deg: {_fmt(s['cobb_within_5deg'], pct=True)} (a film with no angle counts as a miss)\n"
            f"- box IoU >= 0.5: {_fmt(s['box_iou_at_least_0.5'], pct=True)}; median IoU {_fmt(s['box_iou_median'])}\n"
            f"- facing right: {_fmt(s['facing_right'], pct=True)}\n"
            f"- rule class = grade: {_fmt(s['rule_class_matches_grade'], pct=True)}; network class = grade: "
            f"{_fmt(s['network_class_matches_grade'], pct=True)} (graded films only)\n"
            f"- flagged out-of-distribution: {_fmt(s['flagged_ood'], pct=True)}\n\n" + head + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="films with Labelme landmarks beside them (CSXA layout)")
    parser.add_argument("--label", default="zero-shot", help="names the result files: real_films_<label>.*")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--facing", default="film", choices=("film", "left", "right"),
                        help="the official angle's facing: read from each film (default) or given")
    parser.add_argument("--classifier")
    parser.add_argument("--detector")
    parser.add_argument("--landmarks")
    args = parser.parse_args()
    if not films(args.folder):
        sys.exit(f"error: no films with Labelme JSON beside them under {args.folder}")
    summary = run(args.folder, args.label, args.out, args.facing, args.classifier, args.detector, args.landmarks)
    print(markdown(summary, []).split("| film")[0])


if __name__ == "__main__":
    main()
