"""`python -m core predict`: classify radiographs from the command line, one line (or JSON object) per film, with
overlays, a CSV and the Predict page's PNG report on request."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.data import imaging
from core.inference import pipeline, table
from core.inference.verdict import angle_text


def configure_predict(parser: argparse.ArgumentParser) -> None:
    from core.inference.explain import CAM_METHODS

    parser.add_argument("images", nargs="+", help="radiographs (PNG, JPEG, TIFF, DICOM)")
    parser.add_argument("--model", help="classifier: run id, run folder or checkpoint (default: the promoted one)")
    parser.add_argument("--detector", help="ROI detector checkpoint or run (default: the promoted one)")
    parser.add_argument("--landmarks", help="landmark model checkpoint or run (default: the promoted one)")
    parser.add_argument("--cam", default="gradcam", choices=(*CAM_METHODS, "none"),
                        help="class activation map method (default gradcam; none to skip)")
    parser.add_argument("--out", type=Path, help="write <stem>_cam.png overlays and predictions.csv (the Predict "
                        "page's table CSV) here")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--report", type=Path, metavar="OUT.png",
                        help="the one-page PNG report the Predict page downloads (several images: OUT_<image>.png)")
    parser.add_argument("--threshold", type=float, default=pipeline.LOW_CONFIDENCE,
                        help=f"top probability under which a result is flagged low-confidence (default {pipeline.LOW_CONFIDENCE})")
    parser.add_argument("--facing", choices=("left", "right"),
                        help="the image side the patient faces (default: read from the film beside C3-C6)")
    parser.add_argument("--detection-threshold", type=float, default=pipeline.DETECTION_THRESHOLD,
                        help=f"confidence a box or landmark set needs to count as found (default {pipeline.DETECTION_THRESHOLD})")


def run_predict(args: argparse.Namespace) -> int:
    from core.inference import report

    cam_method = None if args.cam == "none" else args.cam
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    predictor = None
    rows, failures, used_stems, rows_results = [], 0, set(), []
    for path in args.images:
        # Each file is read (and its size budgets checked) before any model loads: a batch of hostile or broken
        # files is refused in one line each without torch and three models in memory (~1 GB here).
        try:
            radiograph = imaging.require_usable(imaging.read_image(path, name=path), path)
        except imaging.ImageReadError as error:
            result = pipeline.PredictFailure(path, str(error))
        else:
            if predictor is None:
                try:
                    predictor = pipeline.Predictor(args.model, args.detector, args.landmarks, threshold=args.threshold,
                                          detection_threshold=args.detection_threshold)
                except pipeline.ModelError as error:
                    print(f"error: {error}", file=sys.stderr)
                    return 2
                if not args.json:
                    print(f"classifier {predictor.model_name} ({predictor.classifier_path}); detector "
                          f"{'yes' if predictor.detector else 'none'}; landmarks "
                          f"{'yes' if predictor.landmark_model else 'none'}"
                          + (f"; demo model ({predictor.quality})" if predictor.quality else ""), file=sys.stderr)
            result = next(predictor.predict_many([(path, radiograph)], cam_method=cam_method, facing=args.facing))
        rows_results.append(result)
        if isinstance(result, pipeline.PredictFailure):
            failures += 1
            rows.append(table.row(result))
            print(json.dumps(result.to_json()) if args.json else f"{result.file}: error: {result.reason}",
                  flush=True)
            continue
        cam_path = None
        stem = _unique_stem(Path(result.file).stem, used_stems)
        if args.out and result.verdict.heatmap_shown:  # no map for a class that is not given
            cam_path = args.out / f"{stem}_cam.png"
            report.write_overlay(result, cam_path)
        if args.report:
            target = args.report if len(args.images) == 1 else args.report.with_name(
                f"{args.report.stem}_{stem}{args.report.suffix or '.png'}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(report.report_png(result, report.provenance(predictor), quality=predictor.quality))
        rows.append(table.row(result, cam_path))
        print(json.dumps(result.to_json(cam_path)) if args.json else _summary(result), flush=True)
    if len(args.images) > 1 and not args.json:
        print(pipeline.batch_summary(rows_results), file=sys.stderr)
    if args.out:
        (args.out / "predictions.csv").write_text(table.csv_text(rows), encoding="utf-8", newline="")
    return 1 if failures else 0


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, number = stem, 1
    while candidate in used:
        number += 1
        candidate = f"{stem}_{number}"
    used.add(candidate)
    return candidate


def _summary(result: pipeline.Prediction) -> str:
    """One line per film on the terminal: the verdict first, why, the evidence it rests on, then what to do."""
    verdict = result.verdict
    parts = [f"{result.file}: {verdict.title}"]
    if verdict.warns:
        parts.append(verdict.why)
    parts.append(f"network {result.curvature_class} (p={result.confidence:.2f}"
                 + (", not the result" if verdict.lead != "network" else "") + f"), box from {result.box_source}"
                 + (f" ({result.box_confidence:.2f})" if result.box_confidence is not None else ""))
    if result.measurements is not None and verdict.angle_shown:
        m = result.measurements
        angle = angle_text(m) + (f", CCI {m.cci:.1f} %" if m.lowest_level == "C7" else "")
        if result.facing is not None:
            angle += f" (patient {result.facing.describe()})"
        angle += f" -> {m.rule_class}"
        if result.agreement is False and verdict.lead == "network":
            angle += f" (disagrees with the network; favours {result.evidence})"
        parts.append(angle)
    elif verdict.angle_note:
        parts.append(verdict.angle_note)
    if result.ood_score is not None and result.out_of_distribution:
        parts.append(f"out-of-distribution score {result.ood_score:.2f}")
    if verdict.advice:
        parts.append(f"what to do: {verdict.advice}")
    return "; ".join(part.rstrip(".") for part in parts)
