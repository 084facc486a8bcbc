"""What the Runs page and ``runs show`` / ``runs compare`` read out of run folders; torch-free, read-only.

* :func:`run_rows` -- one row per run of every task: task, model, dataset, label fingerprint, state, the test
  split's headline score with its 95 % interval, duration, device.
* :func:`headline` -- a run's main test score (classify: macro-F1 with its patient-bootstrap interval; landmarks:
  mean landmark error; detect: box mAP50-95; compare: its best model's macro-F1).
* :func:`classification_detail` -- confusion matrix, one-vs-rest ROC curves, reliability diagram and per-class
  table from a classifier's ``test_report.json`` (its per-image predictions).
* :func:`comparison` -- several runs side by side: the config keys that differ (only those), and a metrics table in
  the study's layout with the published S-ResNet-34 row as a reference.
* :func:`metric_name` -- the one mapping from metric keys to the words people read (``macro_f1`` -> ``macro-F1``).
* :func:`run_state` -- one run's state in the words every view shows (Train page chooser and live view, Runs table),
  all derived from the same status fields.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.runs import layout, registry
from core.runs.hardware import DATA_FILE

# Liang et al. 2025 (abstract): S-ResNet-34 on 240 patients. Their "ACC" is most likely the mean one-vs-rest accuracy.
PAPER_ROW = {"run": "Liang et al. 2025 (published)", "model": "s_resnet34", "mean_one_vs_rest_accuracy": 0.9094,
             "macro_f1": 0.8527, "macro_recall": 0.8536}
# The study's table: its three numbers first (ACC = mean one-vs-rest accuracy), then what it does not report.
STUDY_METRICS = (("mean_one_vs_rest_accuracy", "ACC (mean one-vs-rest)"), ("macro_f1", "F1 (macro)"),
                 ("macro_recall", "recall (macro)"), ("accuracy", "3-class accuracy"),
                 ("macro_precision", "precision (macro)"), ("macro_roc_auc", "ROC-AUC (macro)"),
                 ("expected_calibration_error", "ECE"))
# Config keys that say nothing about how a run trained (where it ran, how it was scored afterwards).
INCIDENTAL_KEYS = ("workers", "cache_mb", "n_boot", "device")

# ---------------------------------------------------------------------------------------------- words people read
# Metric keys (test reports, metrics.csv columns, status "metric" strings) -> the name shown on every page and card.
METRIC_NAMES = {
    "macro_f1": "macro-F1", "accuracy": "accuracy", "mean_one_vs_rest_accuracy": "mean one-vs-rest accuracy",
    "macro_precision": "macro precision", "macro_recall": "macro recall", "macro_roc_auc": "macro ROC-AUC",
    "quadratic_kappa": "quadratic-weighted kappa", "expected_calibration_error": "calibration error (ECE)",
    "negative_log_likelihood": "log loss (NLL)", "f1": "F1", "roc_auc": "ROC-AUC",
    "mean_error_px": "mean landmark error (px)", "mean_error_pct_c2c7": "mean landmark error (% of C2-C7)",
    "cobb_mae_deg": "C2-C7 angle error (deg)", "mean_iou": "mean box IoU", "found_at_iou50": "boxes found (IoU >= 0.5)",
    "precision": "box precision", "recall": "box recall", "mAP50": "box mAP50", "mAP50_95": "box mAP50-95",
    "pose_precision": "pose precision", "pose_recall": "pose recall", "pose_mAP50": "pose mAP50",
    "pose_mAP50_95": "pose mAP50-95", "fitness": "YOLO fitness",
    "train_loss": "training loss", "val_loss": "validation loss", "val_acc": "validation accuracy",
    "val_macro_f1": "validation macro-F1", "lr": "learning rate", "seconds": "seconds", "images": "images",
    "missed": "films without an answer", "n_images": "images", "n_patients": "patients",
    # the status files' "metric" strings, as the trainers write them
    "val macro-F1": "validation macro-F1", "val mean landmark error (px)": "validation mean landmark error (px)",
    "mAP50-95": "box mAP50-95", "best macro-F1": "best macro-F1",
}


def metric_name(key: str) -> str:
    """The plain name of a metric key (``val_`` columns read "validation ..."); unknown keys lose their underscores."""
    key = str(key)
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    if key.startswith("val_") and key[4:] in METRIC_NAMES:
        return f"validation {METRIC_NAMES[key[4:]]}"
    return key.replace("_", " ")


# What a run does after its last epoch, before it is done: announced while it trains (classify: _finish_run).
FINAL_STEPS = ("calibrating on validation", "fitting the out-of-distribution reference", "evaluating on the test split",
               "measuring landmark errors")
FINAL_STEP_NOTE = {"classify": "calibration on validation, the out-of-distribution reference and the test report",
                   "compare": "the comparison tables and the best model's files"}
_EPOCH_MESSAGE = re.compile(r"^epoch \d+/\d+\b")
_COUNTER = re.compile(r"\s*\(\d+/\d+\)$")


def final_step_note(task: str) -> str:
    """The words for the step after the last epoch (a few seconds to a minute)."""
    return FINAL_STEP_NOTE.get(task, "the test report")


@dataclass(frozen=True)
class RunState:
    """One run's state as people read it; every field comes from one status.json read."""

    state: str          # as read: queued, running, done, failed, cancelled or interrupted
    label: str          # the few words every view shows: "waiting in the queue", "starting", "running", "done", ...
    detail: str         # what it is doing now, or how it ended ("" when there is nothing more to say)
    epoch: int          # finished epochs (models, for a comparison)
    epochs: int
    unit: str           # what the task counts: "epochs", "models" (a comparison), "steps" (the demo)
    final_step: bool    # running the step after the last epoch
    device: str = ""

    @property
    def headline(self) -> str:
        """``Running on cpu — training``, ``Done — test macro-F1 0.812``, ``Cancelled by user``."""
        text = self.label[:1].upper() + self.label[1:]
        if self.state == "running" and self.device:
            text += f" on {self.device}"
        if self.detail:
            text += (" " if self.detail.startswith(("by ", "for ", "while ")) else " — ") + self.detail
        return text

    @property
    def progress(self) -> str:
        """``4 of 6 epochs done``: the same two status fields the bar is drawn from."""
        if self.epochs <= 0:
            return "not started" if self.epoch <= 0 else f"{self.epoch} {self.unit} done"
        text = f"{self.epoch} of {self.epochs} {self.unit} done"
        if self.epoch < self.epochs and (self.state == "done" or self.final_step):
            text += " (stopped early)"
        return text

    @property
    def fraction(self) -> float:
        if self.state == "done":
            return 1.0
        return 0.0 if self.epochs <= 0 else max(0.0, min(1.0, self.epoch / self.epochs))


def _after(message: str, word: str) -> str:
    """``message`` without a leading repeat of ``word`` ("cancelled by user" under Cancelled -> "by user")."""
    if message.lower().startswith(word):
        message = message[len(word):].lstrip(" :;,.-\u2014")
        if message.startswith("(") and message.endswith(")"):
            message = message[1:-1]
    return message


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def run_state(status: dict, task: str | None = None) -> RunState:
    """The words for a status as :func:`core.runs.layout.read_status` gives it (``interrupted`` derived)."""
    state = str(status.get("state") or "queued")
    task = task or str(status.get("task") or "classify")
    message = str(status.get("message") or "").strip()
    epoch, epochs = _int(status.get("epoch")), _int(status.get("epochs"))
    device = str(status.get("device") or "")
    final = False
    if state == "queued" and status.get("queued_at") and not status.get("pid"):
        label = "waiting in the queue"
        detail = f"for {device or 'its device'}" + (" (to resume)" if "resume" in message else "")
    elif state == "queued":
        label, detail = "starting", _after(_after(message, "starting"), "waiting")
        detail = "" if detail == "no status.json yet" else detail
    elif state == "running":
        label = "running"
        if _EPOCH_MESSAGE.match(message):
            detail = "training"
        elif message in FINAL_STEPS:
            final, detail = True, f"final step: {message}"
        else:
            detail = _COUNTER.sub("", _after(message, "running"))
            detail = "" if detail == "starting" else detail
    elif state == layout.INTERRUPTED:
        label = "interrupted"
        detail = message.removesuffix("; resume to continue")
    else:
        label = state
        detail = _after(message, state)
        if state == "failed":
            detail = _after(detail, "run failed")
    spec = registry.TASKS.get(task)
    return RunState(state, label, detail, epoch, epochs, spec.unit if spec else "epochs", final, device)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def test_report(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / layout.TEST_REPORT)


def data_record(run_dir: str | Path) -> dict:
    """The labels the run was started on (``data.json``, written by the launcher); {} for runs started otherwise."""
    return read_json(Path(run_dir) / DATA_FILE)


def _score(value: Any) -> dict:
    if isinstance(value, dict):
        return {"value": value.get("value"), "low": value.get("low"), "high": value.get("high")}
    return {"value": value if isinstance(value, (int, float)) else None, "low": None, "high": None}


def headline(run_dir: str | Path, task: str | None = None) -> dict | None:
    """``{name, value, low, high, higher_is_better, split}`` of the run's test report, or None before it has one."""
    run_dir = Path(run_dir)
    report = test_report(run_dir)
    if not report:
        return None
    task = task or layout.read_config(run_dir).get("task", "classify")
    if task == "classify":
        score, name, higher = _score((report.get("metrics") or {}).get("macro_f1")), metric_name("macro_f1"), True
    elif task == "compare":
        models = report.get("models") or {}
        best = models.get(report.get("best")) or {}
        score, name, higher = _score(best.get("macro_f1")), f"{metric_name('macro_f1')} of {report.get('best')}", True
    elif task == "landmarks" and "mean_error_px" in report:
        score, name, higher = _score(report.get("mean_error_px")), metric_name("mean_error_px"), False
    elif task == "landmarks":
        score, name, higher = _score(report.get("pose_mAP50_95")), metric_name("pose_mAP50_95"), True
    else:
        score, name, higher = _score(report.get("mAP50_95")), metric_name("mAP50_95"), True
    if score["value"] is None:
        return None
    return {"name": name, "higher_is_better": higher, "split": report.get("split", "test"), **score}


def format_score(score: dict | None, digits: int = 3) -> str:
    """``0.812 [0.701, 0.905]``; ``–`` when there is none."""
    if not score or score.get("value") is None:
        return "–"
    text = f"{score['value']:.{digits}f}"
    if _finite(score.get("low")) and _finite(score.get("high")):
        text += f" [{score['low']:.{digits}f}, {score['high']:.{digits}f}]"
    return text


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _parse_time(text: Any) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def duration_s(run_dir: str | Path, status: dict | None = None) -> float | None:
    """Wall time from start to the last status write (to now while it runs); the epochs' sum when no start time."""
    status = status if status is not None else layout.read_status(run_dir)
    started = _parse_time(status.get("started_at"))
    if started is not None:
        end = (_dt.datetime.now(_dt.timezone.utc) if status.get("state") in ("queued", "running")
               else _parse_time(status.get("updated_at")) or started)
        return max(0.0, (end - started).total_seconds())
    seconds = layout.read_metrics(run_dir).get("seconds")
    total = float(np.nansum(seconds.astype(float))) if seconds is not None and len(seconds) else 0.0
    return total or None


def run_states(runs: Sequence[layout.RunInfo]) -> dict[str, RunState]:
    """run id -> :class:`RunState` of runs as ``layout.list_runs`` read them (the run chooser's words)."""
    return {info.run_id: run_state({**layout.read_status_file(Path(info.run_dir)), "state": info.state}, info.task)
            for info in runs}


def run_rows(runs: Sequence[layout.RunInfo] | None = None, promoted: dict[str, str] | None = None) -> list[dict]:
    """One row per run (newest first) for the Runs table; ``promoted`` maps task -> promoted run id."""
    rows = []
    promoted_ids = set((promoted or {}).values())
    for info in runs if runs is not None else layout.list_runs():
        run_dir = Path(info.run_dir)
        status = layout.read_status_file(run_dir)
        status["state"] = info.state
        data = data_record(run_dir)
        score = headline(run_dir, info.task)
        state = run_state(status, info.task)  # the same words as run_states
        rows.append({
            "run": info.run_id, "task": info.task, "model": info.model, "dataset": info.dataset or data.get("dataset", ""),
            "labels": data.get("fingerprint", ""), "state": state.label, "epoch": f"{state.epoch}/{state.epochs}",
            "best val": info.best_metric, "val metric": metric_name(info.metric) if info.metric else "",
            "test score": format_score(score), "test metric": score["name"] if score else "",
            "duration s": None if (d := duration_s(run_dir, status)) is None else round(d),
            "device": status.get("device") or "",
            "promoted": info.run_id in promoted_ids, "message": info.message,
        })
    return rows


# ---------------------------------------------------------------------------------------------- one classifier
def _predictions(report: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    classes = list(report.get("classes") or [])
    rows = [p for p in report.get("predictions") or [] if p.get("true") in classes]
    y_true = np.array([classes.index(p["true"]) for p in rows], dtype=int)
    probs = np.array([p["probabilities"] for p in rows], dtype=float).reshape(len(rows), len(classes))
    return classes, y_true, probs


def classification_detail(run_dir: str | Path, bins: int = 10) -> dict | None:
    """Confusion matrix, one-vs-rest ROC per class, reliability bins and per-class scores of a classifier's test
    report; None when the run has no test report with predictions."""
    from sklearn.metrics import roc_auc_score, roc_curve

    report = test_report(run_dir)
    if not report.get("predictions"):
        return None
    classes, y_true, probs = _predictions(report)
    roc = {}
    for k, name in enumerate(classes):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue  # one-vs-rest needs both kinds of image
        fpr, tpr, _ = roc_curve(positive, probs[:, k])
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(roc_auc_score(positive, probs[:, k]))}
    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    reliability = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            reliability.append({"low": float(edges[b]), "high": float(edges[b + 1]), "images": int(inside.sum()),
                                "confidence": float(confidence[inside].mean()),
                                "accuracy": float((predicted[inside] == y_true[inside]).mean())})
    per_class = []
    for name, scores in (report.get("per_class") or {}).items():
        row = {"class": name, "support": scores.get("support")}
        for metric in ("precision", "recall", "f1", "roc_auc"):
            row[metric] = format_score(scores.get(metric))
        per_class.append(row)
    return {"classes": classes, "confusion": report.get("confusion_matrix"), "roc": roc,
            "reliability": reliability, "per_class": per_class,
            "metrics": {k: format_score(v) for k, v in (report.get("metrics") or {}).items()},
            "n_images": report.get("n_images"), "n_patients": report.get("n_patients"),
            "notes": report.get("notes") or []}


# ---------------------------------------------------------------------------------------------- several runs
def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_config(run_dirs: Sequence[str | Path]) -> dict[str, dict[str, Any]]:
    """key -> {run id: value} for the config keys whose values differ between the runs (incidental keys left out)."""
    configs = {Path(d).name: _flat(layout.read_config(d)) for d in run_dirs}
    keys = sorted({k for c in configs.values() for k in c} - set(INCIDENTAL_KEYS))
    differing = {}
    for key in keys:
        values = {run: config.get(key) for run, config in configs.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1:
            differing[key] = values
    return differing


def study_table(run_dirs: Sequence[str | Path]) -> list[dict]:
    """The study's layout: one row per classifier run (point [95 % interval]), then the published row."""
    rows = []
    for run_dir in run_dirs:
        report = test_report(run_dir)
        metrics = report.get("metrics") or {}
        if not metrics:
            continue
        row = {"run": Path(run_dir).name, "model": layout.read_config(run_dir).get("model"),
               "test images": report.get("n_images"), "patients": report.get("n_patients")}
        for key, title in STUDY_METRICS:
            row[title] = format_score(metrics.get(key))
        rows.append(row)
    paper = {"run": PAPER_ROW["run"], "model": PAPER_ROW["model"], "test images": None, "patients": 240}
    for key, title in STUDY_METRICS:
        paper[title] = f"{PAPER_ROW[key]:.3f}" if key in PAPER_ROW else "not reported"
    return rows + [paper]


def comparison(run_dirs: Sequence[str | Path]) -> dict:
    """Everything the compare view shows for several runs: their metrics.csv rows (one frame, a ``run`` column), the
    differing config keys and the study-layout table."""
    import pandas as pd

    frames = []
    for run_dir in run_dirs:
        metrics = layout.read_metrics(run_dir)
        if len(metrics):
            frames.append(metrics.assign(run=Path(run_dir).name))
    curves = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", *layout.COMMON_COLUMNS])
    return {"curves": curves, "differing": differing_config(run_dirs), "table": study_table(run_dirs),
            "paper": dict(PAPER_ROW)}
