"""Background runs are processes; the run folder is the only interface between them and the app.

A run is ``python -m core train ...`` started in its own session (so it owns a process group), with
``OMP_NUM_THREADS`` set explicitly and its stdout/stderr appended to the run's ``train.log``. It writes
``status.json`` (atomically), ``metrics.csv`` and checkpoints; pages and the ``runs`` command only read
them. Runs therefore survive page reloads and server restarts. Cancel = SIGTERM to the process group;
resume = ``train --resume RUN`` from ``last.pt``.

A ``running`` (or ``queued``) status whose process is gone is reported as ``interrupted``: the machine
rebooted or the process was killed, and ``resume_run`` continues it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from core import settings
from core.runs.layout import (resolve_run, read_config, JobError, read_status, CONFIG_FILE, METRICS_FILE, now_iso, PROMOTED_FILE)

# ---------------------------------------------------------------------------------------------- promotion
def _best_checkpoint(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "best.pt", run_dir / "weights" / "best.pt"):
        if candidate.exists():
            return candidate
    return None


def promote(run_dir: str | Path, task: str | None = None) -> Path:
    """Copy a run's best checkpoint to ``promoted/<task>/`` (with ``promoted.json``); Predict uses it."""
    run_dir = resolve_run(run_dir)
    config = read_config(run_dir)
    task = task or config.get("task") or "classify"
    checkpoint = _best_checkpoint(run_dir)
    if checkpoint is None:
        raise JobError(f"run {run_dir.name} has no best checkpoint (best.pt) to promote")
    status = read_status(run_dir)
    dest = settings.promoted_dir() / task
    staging = settings.promoted_dir() / f".{task}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(checkpoint, staging / "best.pt")
    for name in (CONFIG_FILE, "test_report.json", METRICS_FILE):
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, staging / name)
    record = {"task": task, "run_id": run_dir.name, "run_dir": str(run_dir), "model": config.get("model"),
              "checkpoint": "best.pt", "state": status.get("state"), "best_metric": status.get("best_metric"),
              "promoted_at": now_iso()}
    (staging / PROMOTED_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    # swap folders so Predict never sees a half-copied model
    old = settings.promoted_dir() / f".{task}.old.{os.getpid()}"
    if dest.exists():
        os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def promoted_model(task: str = "classify") -> Path | None:
    """The promoted checkpoint for a task, or None when nothing was promoted."""
    dest = settings.promoted_dir() / task
    if (dest / PROMOTED_FILE).exists() and (dest / "best.pt").exists():
        return dest / "best.pt"
    return None


def promoted_info(task: str = "classify") -> dict | None:
    path = settings.promoted_dir() / task / PROMOTED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def configure_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder or run id")
    parser.add_argument("--task", choices=("classify", "detect", "landmarks"), default=None,
                        help="default: the run's own task")


def run_promote(args: argparse.Namespace) -> int:
    try:
        dest = promote(args.run, args.task)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"promoted {Path(args.run).name} -> {dest}")
    return 0
