"""Ultralytics' training loop -> the run folder, through the shared RunRecorder: one metrics.csv row and a
status.json update per epoch (from its callbacks), and its log in train.log."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from core.runs import layout
from core.training.detect.networks import TASKS

_PRIMARY_METRIC = {"detect": "metrics/mAP50-95(B)", "pose": "metrics/mAP50-95(P)"}

ProgressCallback = Callable[[int, int, dict], None]


def _same_file(stream, path: Path) -> bool:
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def metrics_column(key: str) -> str:
    """'metrics/mAP50-95(B)' -> 'mAP50_95', '(P)' -> 'pose_...', 'train/box_loss' -> 'train_box_loss'."""
    name = key.removeprefix("metrics/")
    if name.endswith("(B)"):
        name = name[:-3]
    elif name.endswith("(P)"):
        name = "pose_" + name[:-3]
    return name.replace("/", "_").replace("-", "_")


# Ultralytics' epoch results -> the task's metrics.csv columns (after layout.COMMON_COLUMNS)
DETECT_COLUMNS = ("train_box_loss", "train_cls_loss", "train_dfl_loss", "val_box_loss", "val_cls_loss", "val_dfl_loss",
                  "precision", "recall", "mAP50", "mAP50_95", "fitness")
POSE_COLUMNS = DETECT_COLUMNS + ("train_pose_loss", "train_kobj_loss", "val_pose_loss", "val_kobj_loss",
                                 "pose_precision", "pose_recall", "pose_mAP50", "pose_mAP50_95")


def columns_for(task: str) -> tuple[str, ...]:
    return POSE_COLUMNS if task == "landmarks" else DETECT_COLUMNS


class _AnsiFreeFormatter(logging.Formatter):
    _ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def format(self, record):
        return self._ansi.sub("", super().format(record))


@contextlib.contextmanager
def ultralytics_log_into(run_dir: Path):
    """Ultralytics' log into train.log, unless stdout already goes there (a background run)."""
    log_path = run_dir / layout.LOG_FILE
    if _same_file(sys.stdout, log_path):
        yield
        return
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(_AnsiFreeFormatter("%(asctime)s %(message)s", "%H:%M:%S"))
    ulog = logging.getLogger("ultralytics")
    ulog.addHandler(handler)
    try:
        yield
    finally:
        ulog.removeHandler(handler)
        handler.close()


class EpochRecorder:
    """Ultralytics callbacks -> the run's metrics.csv rows and status (through the shared RunRecorder)."""

    def __init__(self, run, task: str, progress_callback: ProgressCallback | None):
        self.run, self.task, self.yolo_task = run, task, TASKS[task]
        self.progress_callback = progress_callback
        self.best_metric: float | None = run.status.get("best_metric") if run.status else None
        self.final_metrics: dict = {}
        self.epoch_metrics: dict = {}
        self.epochs_run = 0
        self._pending_epoch = False
        self._epoch_started = time.time()

    def attach(self, yolo) -> None:
        def on_train_epoch_start(trainer):
            self.run.release_cancel()  # an epoch redone after a NaN never reached on_fit_epoch_end
            self._epoch_started = time.time()

        def on_train_epoch_end(trainer):
            # Ultralytics validates and writes last.pt before on_fit_epoch_end: a cancel in between would resume
            # after an epoch that has no metrics row (seen in CI: epochs 1, 2, 3, 5, 6)
            self.run.hold_cancel()
            self._pending_epoch = True

        yolo.add_callback("on_train_epoch_start", on_train_epoch_start)
        yolo.add_callback("on_train_epoch_end", on_train_epoch_end)
        yolo.add_callback("on_fit_epoch_end", self._on_fit_epoch_end)

    def _on_fit_epoch_end(self, trainer) -> None:
        metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
        if not self._pending_epoch:  # Ultralytics' final validation of best.pt calls this hook once more
            self.final_metrics = metrics
            return
        self._pending_epoch = False
        epoch, epochs = int(trainer.epoch) + 1, int(trainer.epochs)
        self.epochs_run = epoch
        seconds = time.time() - self._epoch_started
        losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        values = {metrics_column(k): float(v) for k, v in losses.items()}
        values.update({metrics_column(k): v for k, v in metrics.items()})
        if trainer.fitness is not None:
            values["fitness"] = float(trainer.fitness)
        lrs = list((getattr(trainer, "lr", None) or {}).values())
        row = {k: v for k, v in values.items() if k in self.run.columns}
        row.update(epoch=epoch, seconds=round(seconds, 3), lr=float(lrs[0]) if lrs else None,
                   train_loss=sum(v for k, v in values.items() if k.startswith("train_") and k.endswith("_loss")),
                   val_loss=sum(v for k, v in values.items() if k.startswith("val_") and k.endswith("_loss")) or None)
        self.run.append_metrics(row)
        primary = metrics.get(_PRIMARY_METRIC[self.yolo_task])
        if primary is not None and (self.best_metric is None or primary > self.best_metric):
            self.best_metric = primary
        self.epoch_metrics = metrics
        name = self.run.metric
        self.run.epoch_status(epoch, epochs, seconds, best_metric=self.best_metric,
                              message=f"epoch {epoch}/{epochs}: {name} " + ("n/a" if primary is None else f"{primary:.4f}"))
        if self.progress_callback is not None:
            self.progress_callback(epoch, epochs, dict(row))
        self.run.release_cancel()

    def seconds_per_epoch(self) -> float | None:
        """Mean train + validation time of one epoch (setup and the final validation left out)."""
        return round(float(np.mean(self.run.epoch_seconds)), 2) if self.run.epoch_seconds else None
