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
REPO_ROOT = Path(__file__).resolve().parents[1]

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
    status = _read_status_file(Path(run_dir))
    status.update(changes)
    return write_status(run_dir, status)


def _read_status_file(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:  # only a hand-edited file can be torn: writes are atomic
        return {"state": "failed", "message": f"unreadable status.json: {exc}"}


def read_status(run_dir: str | Path) -> dict:
    """status.json, with ``state`` = ``interrupted`` when it says queued/running but its process is gone."""
    run_dir = resolve_run(run_dir)
    status = _read_status_file(run_dir)
    if not status:
        status = {"state": "queued" if (run_dir / CONFIG_FILE).exists() else "failed",
                  "message": "no status.json yet"}
    if status.get("state") in ("queued", "running") and not _pid_alive(status.get("pid")):
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


def _pid_alive(pid: Any) -> bool:
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


# ---------------------------------------------------------------------------------------------- processes
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    threads = str(settings.cpu_threads())
    # Explicit: ultralytics sets OMP_NUM_THREADS=1 in the parent when it is unset, and children inherit it.
    env["OMP_NUM_THREADS"] = threads
    env["MKL_NUM_THREADS"] = threads
    # idle OpenMP threads sleep rather than spin: spinning threads of runs sharing a CPU starve each other
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["CERVICURVE_HOME"] = str(settings.home())
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _launch(run_dir: Path, args: list[str], nproc: int = 1) -> int:
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "core", *args]
    else:
        cmd = [sys.executable, "-m", "core", *args]
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_child_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def start_run(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, nproc: int = 1) -> Path:
    """Validate a config (file or dict) plus ``key=value`` overrides, then train it in the background.

    Returns the run folder at once; a bad config raises ``core.runconfig.ConfigError`` here, before any
    process starts. ``nproc > 1`` launches the same run under torchrun (DDP).
    """
    from core import runconfig  # torch is imported only by what trains

    resolved = runconfig.resolve_config(config, overrides)
    task = resolved.get("task", "classify")
    run_dir = new_run_dir(resolved.get("model", task), task)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    write_status(run_dir, {"state": "queued", "epoch": 0, "epochs": resolved.get("epochs", 0), "task": task,
                           "model": resolved.get("model"), "pid": None, "message": "starting"})
    pid = _launch(run_dir, ["train", "--config", str(run_dir / CONFIG_FILE), "--run-dir", str(run_dir)], nproc)
    update_status(run_dir, pid=pid, pgid=pid)
    return run_dir


def resume_run(run_dir: str | Path, *, nproc: int = 1) -> Path:
    """Continue an interrupted, cancelled or failed run from its ``last.pt``."""
    run_dir = resolve_run(run_dir)
    status = read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise JobError(f"run {run_dir.name} is still {status['state']} (pid {status.get('pid')})")
    if not (run_dir / CONFIG_FILE).exists():
        raise JobError(f"run {run_dir.name} has no config.yaml to resume from")
    update_status(run_dir, state="queued", message="resuming", pid=None)
    pid = _launch(run_dir, ["train", "--resume", str(run_dir)], nproc)
    update_status(run_dir, pid=pid, pgid=pid)
    return run_dir


def cancel_run(run_dir: str | Path, timeout: float = 15.0) -> dict:
    """SIGTERM the run's process group (SIGKILL after ``timeout`` s); its status becomes ``cancelled``."""
    run_dir = resolve_run(run_dir)
    status = read_status(run_dir)
    pid = status.get("pid")
    if status.get("state") in ("queued", "running") and _pid_alive(pid):
        pgid = status.get("pgid")
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pass
        # Never signal our own group: a run started from a terminal shares the shell's group.
        own_group = pgid == os.getpgrp()
        _signal(pid, pgid, signal.SIGTERM, own_group)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            _signal(pid, pgid, signal.SIGKILL, own_group)
            while _pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
    elif status.get("state") in ("done", "failed", "cancelled"):
        return status
    return update_status(run_dir, state="cancelled", message="cancelled by user", eta_s=None)


def _signal(pid: int, pgid: int | None, sig: int, own_group: bool) -> None:
    try:
        if pgid and not own_group:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


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


# ---------------------------------------------------------------------------------------------- CLI
def configure_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per run")


def run_runs(args: argparse.Namespace) -> int:
    runs = list_runs()
    if args.json:
        for info in runs:
            print(json.dumps(asdict(info)))
        return 0
    if not runs:
        print(f"no runs in {settings.runs_dir()}")
        return 0
    header = f"{'run':<44} {'task':<9} {'model':<12} {'state':<11} {'epoch':>7} {'best':>7}  updated"
    print(header)
    for r in runs:
        best = f"{r.best_metric:.4f}" if r.best_metric is not None else "-"
        print(f"{r.run_id:<44} {r.task:<9} {r.model:<12} {r.state:<11} {f'{r.epoch}/{r.epochs}':>7} {best:>7}  "
              f"{r.updated_at}")
    return 0


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
