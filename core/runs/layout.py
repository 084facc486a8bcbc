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

STATES = ("queued", "running", "done", "failed", "cancelled")
INTERRUPTED = "interrupted"  # derived when reading, never written
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
PROMOTED_FILE = "promoted.json"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Popen objects of runs this process started: polling them reaps finished children, which would
# otherwise linger as zombies that still answer os.kill(pid, 0).
_CHILDREN: dict[int, subprocess.Popen] = {}


class JobError(ValueError):
    """A run that cannot be found, started, cancelled, resumed or promoted."""


@dataclass
class RunInfo:
    run_id: str
    run_dir: str
    task: str
    model: str
    state: str
    epoch: int
    epochs: int
    best_metric: float | None
    updated_at: str
    message: str


# ---------------------------------------------------------------------------------------------- run folders
def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_dir(model: str, task: str = "classify") -> Path:
    """A fresh, empty run folder ``runs/<time>-<task>-<model>-<random>`` (sortable by start time)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_model = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(model))
    run_dir = settings.runs_dir() / f"{stamp}-{task}-{safe_model}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def resolve_run(run: str | Path) -> Path:
    """A run folder from a path or a run id (folder name under the workspace's runs/)."""
    path = Path(run)
    if path.is_dir():
        return path.resolve()
    candidate = settings.runs_dir() / str(run)
    if candidate.is_dir():
        return candidate
    raise JobError(f"no run folder '{run}' (looked at {path} and {candidate})")


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_status(run_dir: str | Path, status: Mapping[str, Any]) -> dict:
    status = dict(status)
    status["updated_at"] = now_iso()
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps(status, indent=1, default=str))
    return status


def update_status(run_dir: str | Path, **changes: Any) -> dict:
    status = read_status_file(Path(run_dir))
    status.update(changes)
    return write_status(run_dir, status)


def read_status_file(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:  # only a hand-edited file can be torn: writes are atomic
        return {"state": "failed", "message": f"unreadable status.json: {exc}"}


def read_status(run_dir: str | Path) -> dict:
    """status.json, with ``state`` = ``interrupted`` when it says queued/running but its process is gone."""
    run_dir = resolve_run(run_dir)
    status = read_status_file(run_dir)
    if not status:
        status = {"state": "queued" if (run_dir / CONFIG_FILE).exists() else "failed",
                  "message": "no status.json yet"}
    if status.get("state") in ("queued", "running") and not pid_alive(status.get("pid")):
        status["state"] = INTERRUPTED
        status["message"] = "the training process is gone (killed or machine restarted); resume to continue"
    status.setdefault("run_id", run_dir.name)
    return status


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def read_metrics(run_dir: str | Path):
    """metrics.csv as a pandas DataFrame (empty, with the columns, before the first epoch ends)."""
    import pandas as pd

    path = resolve_run(run_dir) / METRICS_FILE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds"])
    return pd.read_csv(path)


def pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    for child in list(_CHILDREN.values()):
        child.poll()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
            # a recycled pid belongs to some other program
            if b"core" not in (proc / "cmdline").read_bytes():
                return False
        except (OSError, IndexError):
            pass
    return True


def list_runs() -> list[RunInfo]:
    """Every run folder in the workspace, newest first."""
    runs = []
    for run_dir in sorted((p for p in settings.runs_dir().iterdir() if p.is_dir()), reverse=True):
        status = read_status(run_dir)
        config = read_config(run_dir)
        best = status.get("best_metric")
        runs.append(RunInfo(
            run_id=run_dir.name, run_dir=str(run_dir), task=str(status.get("task") or config.get("task", "classify")),
            model=str(status.get("model") or config.get("model", "")), state=str(status.get("state", "")),
            epoch=int(status.get("epoch") or 0), epochs=int(status.get("epochs") or config.get("epochs") or 0),
            best_metric=float(best) if best is not None else None, updated_at=str(status.get("updated_at", "")),
            message=str(status.get("message", "") or ""),
        ))
    return runs


