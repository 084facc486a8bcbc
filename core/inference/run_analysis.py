"""Per-image analysis of a landmark or detector run on a split, for the Runs page and ``python -m core analyse RUN``.

Landmark runs: the error of each of the 23 landmarks, and a Bland–Altman comparison of the predicted against the
labelled C2–C7 Cobb angle (bias and 95 % limits of agreement = bias +/- 1.96 SD of the differences). Detector runs:
the IoU of the most confident box with the labelled ROI box, per image (a miss counts as IoU 0). The models are
loaded through the task registry, exactly as Predict uses them; the result is written to ``<split>_analysis.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.evaluation.agreement import bland_altman
from core.data.measure import LANDMARK_NAMES, LandmarkError, infer_facing, measure_landmarks, roi_box_from_landmarks
from core.runs import layout
from core.runs.configs import ConfigError
from core.training.tasks import run_config, task_for


def _items(config: dict, split: str):
    from core.data.datasets import training_items

    if not config.get("dataset"):
        raise ConfigError("this run trained on a YOLO data.yaml, not a store dataset: nothing to analyse here")
    return training_items(config["dataset"], split)


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_analysis(run_dir: Path, config: dict, split: str) -> dict:
    from core.data.imaging import read_image

    model = task_for(config).load(run_dir / "best.pt")
    per_point, angles, images, missed = [], [], 0, 0
    for item in _items(config, split):
        truth = None if item.landmarks is None else np.asarray(item.landmarks, dtype=float)
        if truth is None or truth.shape != (len(LANDMARK_NAMES), 2) or not np.isfinite(truth).all():
            continue
        pixels = read_image(item.path).pixels
        found = model.locate(pixels, item.roi_box or roi_box_from_landmarks(truth, pixels.shape[::-1]),
                             min_confidence=0.0)
        if found is None:
            missed += 1
            continue
        images += 1
        predicted = np.asarray(found[0], dtype=float)
        per_point.append(np.linalg.norm(predicted - truth, axis=1))
        try:
            facing = infer_facing(truth)
            angles.append((measure_landmarks(truth, facing=facing).cobb_c2c7,
                           measure_landmarks(predicted, facing=facing).cobb_c2c7, item.image_id))
        except LandmarkError:
            pass
    errors = np.array(per_point) if per_point else np.zeros((0, len(LANDMARK_NAMES)))
    result = {"task": "landmarks", "split": split, "images": images, "missed": missed,
              "per_landmark": [{"landmark": name, "mean_error_px": float(np.nanmean(errors[:, k])) if images else None,
                                "median_error_px": float(np.nanmedian(errors[:, k])) if images else None}
                               for k, name in enumerate(LANDMARK_NAMES)],
              "bland_altman": None}
    # the model against the truth, as agreement.py compares two annotators: difference = predicted - truth
    limits = bland_altman([a[1] for a in angles], [a[0] for a in angles])
    if limits is not None:
        result["bland_altman"] = {
            "mean_deg": limits.means, "difference_deg": limits.differences, "image_ids": [a[2] for a in angles],
            "bias_deg": limits.bias, "sd_deg": limits.sd, "lower_deg": limits.lower, "upper_deg": limits.upper}
    return result


def detector_analysis(run_dir: Path, config: dict, split: str) -> dict:
    from core.data.imaging import read_image

    model = task_for(config).load(run_dir / "best.pt")
    ious = []
    for item in _items(config, split):
        if not item.roi_box:
            continue
        found = model.detect(read_image(item.path).pixels, min_confidence=0.001)
        ious.append(0.0 if found is None else _iou(found[0], item.roi_box))
    values = np.array(ious)
    return {"task": "detect", "split": split, "images": len(ious), "iou": values.tolist(),
            "mean_iou": float(values.mean()) if len(values) else None,
            "found_at_iou50": float((values >= 0.5).mean()) if len(values) else None}


def analyse(run: str | Path, split: str = "test", *, actor=None) -> dict:
    """The analysis of a finished landmark or detector run on ``split``; also written to ``<split>_analysis.json``.
    ``actor``: who asks (``core.data.accounts.authorize``: an admin in team mode; it writes into the run folder)."""
    from core.data.accounts import authorize

    authorize(actor, "analyse", f"{run} {split}")
    run_dir = layout.resolve_run(run)
    config = run_config(run_dir)
    if not (run_dir / "best.pt").exists():
        raise layout.JobError(f"run {run_dir.name} has no best.pt yet")
    if config.get("task") == "landmarks":
        result = landmark_analysis(run_dir, config, split)
    elif config.get("task") == "detect":
        result = detector_analysis(run_dir, config, split)
    else:
        raise ConfigError(f"a {config.get('task')} run's analysis is its test report (the Runs page shows it)")
    result["run_id"] = run_dir.name
    layout.atomic_write_text(run_dir / f"{split}_analysis.json", json.dumps(result, indent=1))
    return result
