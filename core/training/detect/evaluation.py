"""The task's ``evaluate`` (Ultralytics' validator on a split) and the landmark errors of a YOLO-pose model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from core.runs import layout
from core.training.detect.checkpoint import read_checkpoint_meta
from core.training.detect.dataset import load_dataset_yaml, read_yolo_landmarks
from core.training.detect.networks import TASKS
from core.training.detect.predict import LandmarkModel
from core.training.detect.recording import metrics_column
from core.training.detect.sandbox import yolo_session, resolve_device


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """The run's best weights scored by Ultralytics' validator on ``split`` of the dataset it trained on;
    YOLO-pose runs add the landmark errors. Written to ``<split>_report.json``."""
    run_dir = layout.resolve_run(run_dir)
    meta = read_checkpoint_meta(run_dir / "best.pt")
    dataset_yaml = run_dir / "dataset.yaml"
    data, _ = load_dataset_yaml(dataset_yaml)
    if not data.get(split):
        raise ValueError(f"{dataset_yaml} has no '{split}' split")
    weights = run_dir / str(meta.get("ultralytics_weights") or "ultralytics/weights/best.pt")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} (the run's own Ultralytics weights) is missing")
    with yolo_session():
        from ultralytics import YOLO

        results = YOLO(str(weights), task=TASKS[meta["task"]]).val(
            data=str(dataset_yaml), split=split, imgsz=int(meta.get("imgsz") or 640), device=resolve_device("auto"),
            project=str(run_dir), name=f"ultralytics_{split}", exist_ok=True, plots=False, verbose=False)
    scores = {k: float(v) for k, v in results.results_dict.items()}
    report = {"split": split, "run_id": run_dir.name, "task": meta["task"],
              **{metrics_column(k): v for k, v in scores.items()}}
    if meta["task"] == "landmarks":
        report["landmark_errors"] = evaluate_landmarks(LandmarkModel(run_dir / "best.pt"),
                                                       read_yolo_landmarks(dataset_yaml, split))
    layout.atomic_write_text(run_dir / f"{split}_report.json", json.dumps(report, indent=1, default=str))
    return report


def evaluate_landmarks(model: LandmarkModel, items: Iterable) -> dict:
    """Point error and the clinical number that depends on it (Cobb C2–C7) on labelled images.

    ``items``: ``(image, true_landmarks)`` or ``(image, true_landmarks, facing)``. Errors are per visible point;
    the percentage is relative to the C2–C7 length (C2 centroid to the middle of the C7 lower endplate) of each
    image. Facing comes from the truth (given or inferred) and is used for both, so a Cobb error is never a sign
    flip from a different facing guess. ``missed`` counts images without a detection.
    """
    from core.data.measure import landmark_errors

    pairs, images, missed = [], 0, 0
    for item in items:
        images += 1
        predicted = model.predict(item[0])
        if predicted is None:
            missed += 1
            continue
        pairs.append((predicted[0], *item[1:]))
    summary = landmark_errors(pairs)
    return {**{k: summary[k] for k in ("mean_error_px", "mean_error_pct_c2c7", "cobb_mae_deg")},
            "images": images, "missed": missed}
