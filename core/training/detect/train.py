"""The ``detect`` and YOLO-pose ``landmarks`` task: a config in, a full run folder out.

A run folder looks like every other run (docs/ARCHITECTURE.md): ``status.json`` (written atomically, updated
after every epoch from an Ultralytics callback), ``metrics.csv`` (one row per epoch), ``train.log``,
``dataset.yaml`` (the sanitised dataset description actually trained on), ``best.pt``/``last.pt`` and
``test_report.json``. Training runs on one device ('auto', 'cpu', 'cuda:N'): Ultralytics' multi-GPU mode is a
generated script our callbacks never reach.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from core.runs import layout
from core.runs.configs import YoloConfig
from core.runs.recorder import RunRecorder, log
from core.training.detect.checkpoint import export_checkpoint
from core.training.detect.dataset import load_dataset_yaml, write_dataset_yaml, read_yolo_landmarks
from core.training.detect.evaluation import evaluate_landmarks
from core.training.detect.networks import TASKS, network_source
from core.training.detect.predict import LandmarkModel
from core.training.detect.recording import ProgressCallback, EpochRecorder, ultralytics_log_into, columns_for
from core.training.detect.sandbox import yolo_session, resolve_device


@dataclass
class DetectorReport:
    task: str                       # "detect" | "landmarks"
    mAP50: float | None             # box mAP on the report split
    mAP50_95: float | None
    weights: Path                   # run_dir/best.pt (weights-only CerviCurve checkpoint)
    last_weights: Path
    run_dir: Path
    split: str                      # "test" when the dataset has one, else "val"
    precision: float | None = None
    recall: float | None = None
    pose_mAP50: float | None = None
    pose_mAP50_95: float | None = None
    landmark_errors: dict | None = None
    epochs_run: int = 0
    seconds: float = 0.0
    seconds_per_epoch: float | None = None  # mean train + validation time of one epoch

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("weights", "last_weights", "run_dir"):
            out[key] = str(out[key])
        return out


def _metric(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fit(config: Mapping[str, Any] | YoloConfig, run_dir, *, resume: bool = False,
        progress_callback: ProgressCallback | None = None) -> DetectorReport:
    """The ``detect`` task (ROI detector) or YOLO-pose ``landmarks``: a config in, a full run folder out.

    ``config`` is a :class:`core.runs.configs.YoloConfig` (or its dict): ``data`` (a YOLO data.yaml) or ``dataset``
    (a store dataset, exported with ``core.data.exports.export_yolo`` into run_dir/dataset, cut to the ROI window with
    ``crop: roi``). ``resume`` continues run_dir from Ultralytics' last.pt.
    """
    cfg = config if isinstance(config, YoloConfig) else YoloConfig.from_dict(config)
    run_dir = Path(run_dir).resolve()
    metric = "pose mAP50-95" if cfg.task == "landmarks" else "mAP50-95"
    with RunRecorder(run_dir, cfg.task, columns_for(cfg.task), model=cfg.model, metric=metric) as run:
        run.write_config(cfg.to_dict())
        run.update(epoch=0 if not resume else run.status.get("epoch", 0), epochs=cfg.epochs, message="preparing")
        data = cfg.data
        if resume and (run_dir / "dataset.yaml").is_file():
            data = run_dir / "dataset.yaml"  # what the interrupted run trained on
        elif not data:
            run.update(message=f"exporting dataset {cfg.dataset}")
            from core.data.exports import export_yolo

            exported = export_yolo(cfg.dataset, run_dir / "dataset", task=cfg.task,
                                   crop="roi" if cfg.crop == "roi" else None, roi_margin=cfg.roi_margin)
            data = Path(exported.out) / "data.yaml"
        return _train(cfg, data, run, progress_callback, resume)


def _train(cfg: YoloConfig, data_yaml, run, progress_callback, resume: bool) -> DetectorReport:
    task, yolo_task, run_dir = cfg.task, TASKS[cfg.task], run.run_dir
    epochs = EpochRecorder(run, task, progress_callback)
    if resume:
        source = str(run_dir / "ultralytics" / "weights" / "last.pt")
        if not Path(source).is_file():
            raise FileNotFoundError(f"nothing to resume in {run_dir}: {source} is missing")
        run.keep_metrics_until(int(run.status.get("epoch") or 0))
    else:
        source = network_source(cfg.model, yolo_task)
    dataset_yaml = write_dataset_yaml(data_yaml, run_dir / "dataset.yaml", yolo_task)
    device = resolve_device(cfg.device)
    workers = cfg.workers if cfg.workers is not None else 0 if device == "cpu" else min(8, os.cpu_count() or 1)
    log.info(f"training {task} model {source} on {dataset_yaml} ({cfg.epochs} epochs, {cfg.imgsz} px, "
             f"device {device})")
    started = time.time()
    with yolo_session(), ultralytics_log_into(run_dir):
        from ultralytics import YOLO

        try:
            yolo = YOLO(source, task=yolo_task)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"unknown network {cfg.model!r}: {exc}") from exc
        except TypeError as exc:  # Ultralytics' restricted loader refusing a .pt
            raise ValueError(
                f"{cfg.model} cannot be loaded safely as YOLO weights: Ultralytics' restricted loader (weights_only "
                f"plus an allow-list of its layer classes) refused it, so nothing in it was run"
            ) from exc
        if yolo.task != yolo_task:
            raise ValueError(f"{cfg.model} is a {yolo.task} network; {task} needs a {yolo_task} network")
        epochs.attach(yolo)
        yolo.train(
            data=str(dataset_yaml), epochs=cfg.epochs, imgsz=cfg.imgsz, batch=cfg.batch, device=device,
            seed=cfg.seed, deterministic=True, workers=workers, patience=cfg.patience,
            project=str(run_dir), name="ultralytics", exist_ok=True, plots=False, verbose=False, val=True,
            # a path, never True: True makes Ultralytics resume its most recent run anywhere on disk
            **({"resume": source} if resume else {}),
        )
        run.check_cancel()
        ultra_dir = Path(yolo.trainer.save_dir)
        final = epochs.final_metrics or epochs.epoch_metrics
        split = "val"
        if "test" in load_dataset_yaml(dataset_yaml)[0]:
            split = "test"
            run.update(message="evaluating on the test split", eta_s=None)
            final = {k: float(v) for k, v in yolo.val(
                data=str(dataset_yaml), split="test", imgsz=cfg.imgsz, batch=cfg.batch, device=device,
                project=str(run_dir), name="ultralytics_test", exist_ok=True, plots=False, verbose=False,
            ).results_dict.items()}
        seconds = time.time() - started
        meta = {
            "task": task, "imgsz": cfg.imgsz, "epochs": epochs.epochs_run, "metrics": final,
            "config": cfg.to_dict(), "model_source": str(cfg.model), "dataset": str(dataset_yaml),
            "crop": cfg.crop, "roi_margin": cfg.roi_margin,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ultralytics_version": _version(), "landmark_names": _landmark_names() if task == "landmarks" else None,
        }
        best_src = ultra_dir / "weights" / "best.pt"
        last_src = ultra_dir / "weights" / "last.pt"
        best = export_checkpoint(best_src, run_dir / "best.pt",
                                  {**meta, "ultralytics_weights": str(best_src.relative_to(run_dir))})
        last = export_checkpoint(last_src, run_dir / "last.pt",
                                  {**meta, "ultralytics_weights": str(last_src.relative_to(run_dir))})
    report = DetectorReport(
        task=task, mAP50=_metric(final, "metrics/mAP50(B)"), mAP50_95=_metric(final, "metrics/mAP50-95(B)"),
        precision=_metric(final, "metrics/precision(B)"), recall=_metric(final, "metrics/recall(B)"),
        pose_mAP50=_metric(final, "metrics/mAP50(P)"), pose_mAP50_95=_metric(final, "metrics/mAP50-95(P)"),
        weights=best, last_weights=last, run_dir=run_dir, split=split, epochs_run=epochs.epochs_run,
        seconds=round(seconds, 2), seconds_per_epoch=epochs.seconds_per_epoch(),
    )
    if task == "landmarks":
        run.update(message="measuring landmark errors")
        report.landmark_errors = evaluate_landmarks(LandmarkModel(best), read_yolo_landmarks(dataset_yaml, split))
    run.write_json(layout.TEST_REPORT, report.as_dict())
    final_metric = report.pose_mAP50_95 if task == "landmarks" else report.mAP50_95
    run.done(f"done: {split} {run.metric} {'n/a' if final_metric is None else f'{final_metric:.4f}'}",
             best_metric=epochs.best_metric)
    log.info(f"done in {seconds:.1f} s; report in test_report.json")
    return report


def _version() -> str:
    import ultralytics

    return ultralytics.__version__


def _landmark_names() -> list[str]:
    from core.data.measure import LANDMARK_NAMES

    return list(LANDMARK_NAMES)


def train_detector(data_yaml, run_dir, *, resume: bool = False, progress_callback: ProgressCallback | None = None,
                   **options: Any) -> DetectorReport:
    """Train the ROI detector on a YOLO detection dataset (``options``: YoloConfig keys, e.g. epochs, imgsz)."""
    return fit({"task": "detect", "data": str(data_yaml), **options}, run_dir, resume=resume,
               progress_callback=progress_callback)


def train_landmark_model(data_yaml, run_dir, *, resume: bool = False,
                         progress_callback: ProgressCallback | None = None, **options: Any) -> DetectorReport:
    """Train YOLO-pose on the 23 landmarks (kpt_shape [23, 3]); the report adds landmark errors and Cobb MAE."""
    return fit({"task": "landmarks", "data": str(data_yaml), **options}, run_dir, resume=resume,
               progress_callback=progress_callback)
