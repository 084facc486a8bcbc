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
from core.runs.layout import (REPO_ROOT, LOG_FILE, _CHILDREN, new_run_dir, CONFIG_FILE, write_status, update_status, resolve_run, read_status, JobError, pid_alive, list_runs)

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

    Returns the run folder at once; a bad config raises ``core.runs.configs.ConfigError`` here, before any
    process starts. ``nproc > 1`` launches the same run under torchrun (DDP).
    """
    from core.runs import configs  # torch is imported only by what trains

    resolved = configs.resolve_config(config, overrides)
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
    if status.get("state") in ("queued", "running") and pid_alive(pid):
        pgid = status.get("pgid")
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pass
        # Never signal our own group: a run started from a terminal shares the shell's group.
        own_group = pgid == os.getpgrp()
        _signal(pid, pgid, signal.SIGTERM, own_group)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            _signal(pid, pgid, signal.SIGKILL, own_group)
            while pid_alive(pid) and time.monotonic() < deadline + 5:
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

