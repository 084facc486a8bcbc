"""Promotion: the run whose model Predict uses, one per task, copied whole into ``promoted/<task>/``.

The copy (best.pt, config, metrics, test report, ``promoted.json``) is made beside and swapped in, so Predict never
sees a half-copied model; a promoted model survives the deletion of its run folder (which is refused anyway).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from core import settings
from core.runs.layout import CONFIG_FILE, METRICS_FILE, TEST_REPORT, JobError, now_iso, read_config, read_status, \
    resolve_run

PROMOTED_FILE = "promoted.json"
PROMOTABLE = ("classify", "detect", "landmarks")


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
    # a comparison's best.pt is its best classifier
    task = task or {"compare": "classify"}.get(config.get("task"), config.get("task")) or "classify"
    if task not in PROMOTABLE:
        raise JobError(f"a {task} run has no model for Predict")
    checkpoint = _best_checkpoint(run_dir)
    if checkpoint is None:
        raise JobError(f"run {run_dir.name} has no best checkpoint (best.pt) to promote")
    status = read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise JobError(f"run {run_dir.name} is still {status['state']}: promote it when it is done")
    dest = settings.promoted_dir() / task
    staging = settings.promoted_dir() / f".{task}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copy2(checkpoint, staging / "best.pt")
    for name in (CONFIG_FILE, TEST_REPORT, METRICS_FILE):
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
    parser.add_argument("--task", choices=PROMOTABLE, default=None,
                        help="default: the run's own task")


def run_promote(args: argparse.Namespace) -> int:
    try:
        dest = promote(args.run, args.task)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"promoted {Path(args.run).name} -> {dest}")
    return 0
