"""The run folder: its file names, atomic status writes, reading status back, and "is this run alive".

The bottom of ``core.runs``: no torch, no trainer. A run folder ``$CERVICURVE_HOME/runs/<run_id>/`` holds, for
every task, ``config.yaml``, ``status.json``, ``metrics.csv`` (one schema: :data:`COMMON_COLUMNS` then the task's
own), ``train.log``, ``best.pt`` / ``last.pt`` and ``test_report.json``.

A status that says queued/running is believed only while its process is alive and its heartbeat is fresh: a
run whose process is gone (killed, machine restarted) or whose heartbeat stopped reads as ``interrupted``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from core import settings

STATES = ("queued", "running", "done", "failed", "cancelled")
INTERRUPTED = "interrupted"  # derived when reading, never written
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
LOG_FILE = "train.log"
TEST_REPORT = "test_report.json"
REPO_ROOT = Path(__file__).resolve().parents[2]
# Columns every task's metrics.csv starts with; each task appends its own named columns.
COMMON_COLUMNS = ("epoch", "split", "train_loss", "val_loss", "lr", "seconds")
# A running process rewrites its heartbeat every HEARTBEAT_S; one older than STALE_S means it is hung or gone.
HEARTBEAT_S = 5.0
STALE_S = 120.0


class JobError(ValueError):
    """A run that cannot be found, started, cancelled, resumed, deleted or promoted."""


@dataclass
class RunInfo:
    run_id: str
    run_dir: str
    task: str
    model: str
    dataset: str
    state: str
    epoch: int
    epochs: int
    best_metric: float | None
    metric: str
    updated_at: str
    message: str


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# What new_run_dir names a run: <yyyymmdd>-<hhmmss>-<task>-<model>-<4 hex>. A run id from a page, the CLI or a
# status file is only ever a folder name of this form, so "", "..", "/etc" or "a/../../b" can never name a run.
RUN_ID = re.compile(r"\d{8}-\d{6}-[a-z]+-[\w-]{1,100}-[0-9a-f]{4}")


def new_run_dir(model: str, task: str = "classify",
                prepare: Callable[[Path, Path], None] | None = None) -> Path:
    """A fresh run folder ``runs/<time>-<task>-<model>-<random>`` (sortable by start time).

    With ``prepare``, the folder is made under a hidden staging name, ``prepare(staging, run_dir)`` writes its
    first files there (config, status; paths inside name ``run_dir``), and only then is it renamed into place:
    a reader never meets a run folder without its config and status, which it would have to call failed."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_model = "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(str(model)).stem)[:100] or "model"
    run_dir = settings.runs_dir() / f"{stamp}-{task}-{safe_model}-{secrets.token_hex(2)}"
    if prepare is None:
        run_dir.mkdir(parents=True, exist_ok=False)
        return run_dir
    staging = run_dir.with_name(f".{run_dir.name}.staging")
    _sweep_staging(staging.parent)
    staging.mkdir(parents=True, exist_ok=False)
    try:
        prepare(staging, run_dir)
        if run_dir.exists():  # rename would replace an empty folder of the same name
            raise FileExistsError(run_dir)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _sweep_staging(root: Path) -> None:
    """Staging folders a killed process left behind. One lives for the few milliseconds its first files take, so
    one older than STALE_S belongs to no live process."""
    if not root.is_dir():
        return
    for stale in root.glob(".*.staging"):
        try:
            if time.time() - stale.stat().st_mtime > STALE_S:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # another process swept it first
            pass


def run_dirs() -> list[Path]:
    """Every run folder of the workspace, unsorted: not the hidden folders new_run_dir stages runs in."""
    root = settings.runs_dir()
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []


def run_path(run: str | Path) -> Path:
    """The run folder ``run`` names, for anything that changes or deletes a run (cancel, resume, delete, promote,
    queue moves) and for every run id a page passes: a run id, or the path of a folder that is a direct child of
    the workspace's ``runs/`` with a run id's name. Anything else is refused (JobError), so no verb can reach a
    folder outside ``runs/``, ``runs/`` itself or the workspace."""
    text = str(run)
    root = settings.runs_dir().resolve()
    path = Path(text)
    name = text
    if text and (path.is_absolute() or len(path.parts) > 1):
        # normpath, not resolve: "runs/<id>/.." must not turn into a name, and a symlink is refused below
        absolute = Path(os.path.normpath(path.absolute()))
        if absolute.parent.resolve() != root:
            raise JobError(f"no run {_shown(text)}: a run is a folder directly under {root}")
        name = absolute.name
    check_run_id(name)
    run_dir = root / name
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise JobError(f"no run {name!r} in {root}; `python -m core runs` lists them")
    return run_dir


def check_run_id(run_id: str) -> str:
    """``run_id`` when it has the form new_run_dir gives run ids, else JobError (one line)."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise JobError(f"no run {_shown(run_id)}: a run id looks like <date>-<time>-<task>-<model>-<4 hex>, "
                       "as `python -m core runs` lists them")
    return run_id


def _shown(value: Any) -> str:
    text = repr(str(value))
    return text if len(text) <= 80 else text[:77] + "...'"


def resolve_run(run: str | Path) -> Path:
    """A run folder to read (status, metrics, evaluate, predict --model, init_from): a run id under the workspace's
    runs/ (checked as :func:`run_path` checks it), or the path of any folder holding a run's files (a run copied
    from elsewhere, a test's folder). Whatever changes or deletes a run goes through :func:`run_path` instead."""
    path = Path(run)
    if str(run) and path.is_dir() and ((path / CONFIG_FILE).exists() or (path / STATUS_FILE).exists()):
        return path.resolve()
    return run_path(run)


def atomic_write_text(path: Path, text: str) -> None:
    """Readers see the old or the new file, never half of one."""
    path = Path(path)
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
    """status.json as written (no liveness check)."""
    try:
        status = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:  # only a hand-edited file can be torn: writes are atomic
        return {"state": "failed", "message": f"unreadable status.json: {exc}"}
    return status if isinstance(status, dict) else {"state": "failed", "message": "status.json is not an object"}


def read_status(run_dir: str | Path) -> dict:
    """status.json, with ``state`` = ``interrupted`` when it says queued/running but nothing runs it any more."""
    run_dir = resolve_run(run_dir)
    status = read_status_file(run_dir)
    if not status:
        status = {"state": "queued" if (run_dir / CONFIG_FILE).exists() else "failed",
                  "message": "no status.json yet"}
    if status.get("state") in ("queued", "running"):
        reason = _why_not_alive(status)
        if reason:
            status["state"] = INTERRUPTED
            status["message"] = f"{reason}; resume to continue"
    status.setdefault("run_id", run_dir.name)
    return status


def _why_not_alive(status: Mapping[str, Any]) -> str | None:
    if status.get("state") == "queued" and status.get("queued_at") and not status.get("pid"):
        return None  # waiting in the queue: no process yet, by design
    if not pid_alive(status.get("pid")):
        return "the training process is gone (killed or machine restarted)"
    beat = status.get("heartbeat")
    if isinstance(beat, (int, float)) and time.time() - beat > STALE_S:
        return f"no heartbeat for {time.time() - beat:.0f} s (the process hangs)"
    return None


def pid_alive(pid: Any) -> bool:
    """Whether ``pid`` is a live CerviCurve process (a zombie or a recycled pid of another program is not)."""
    import psutil

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return any("core" in part for part in process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's process holds that pid: not our run
        return False


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: str | Path):
    """metrics.csv as a pandas DataFrame (empty, with the common columns, before the first epoch ends)."""
    import pandas as pd

    path = resolve_run(run_dir) / METRICS_FILE
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(COMMON_COLUMNS))
    return pd.read_csv(path)


def list_runs() -> list[RunInfo]:
    """Every run folder in the workspace, newest first."""
    runs = []
    for run_dir in sorted(run_dirs(), reverse=True):
        status = read_status(run_dir)
        config = read_config(run_dir)
        best = status.get("best_metric")
        runs.append(RunInfo(
            run_id=run_dir.name, run_dir=str(run_dir), task=str(status.get("task") or config.get("task", "classify")),
            model=str(status.get("model") or config.get("model") or ""), dataset=str(config.get("dataset") or ""),
            state=str(status.get("state", "")), epoch=int(status.get("epoch") or 0),
            epochs=int(status.get("epochs") or config.get("epochs") or 0),
            best_metric=float(best) if isinstance(best, (int, float)) else None,
            metric=str(status.get("metric") or ""), updated_at=str(status.get("updated_at", "")),
            message=str(status.get("message", "") or ""),
        ))
    return runs
