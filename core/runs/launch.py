"""Run control: start, resume, cancel and delete background runs of every task (`python -m core runs ...`).

A run is ``python -m core train ...`` started in its own session (so it owns a process group), with
``OMP_NUM_THREADS`` set explicitly and its stdout/stderr appended to the run's ``train.log``. It writes its run folder
(``core.runs.recorder``); this module, the pages and the ``runs`` command only read it, so a run started by one
process is watched and cancelled from any other, and runs survive page reloads and server restarts.
Cancel = SIGTERM to the process group; resume = ``train --resume RUN`` from ``last.pt``. Only configs are imported
here (a subprocess does the training), so starting a run never loads torch.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from core import settings
from core.runs import layout, promotion
from core.runs.configs import ConfigError, resolve_config

# Popen objects of runs this process started: polling them reaps finished children (no zombies in the server).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


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
    env["PYTHONPATH"] = os.pathsep.join([str(layout.REPO_ROOT)]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _launch(run_dir: Path, args: list[str], nproc: int = 1) -> int:
    _reap()
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "core", *args]
    else:
        cmd = [sys.executable, "-m", "core", *args]
    with open(run_dir / layout.LOG_FILE, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=layout.REPO_ROOT, env=_child_env(), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def start_run(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, nproc: int = 1) -> Path:
    """Validate a config (file or dict) plus ``key=value`` overrides, then train it in the background.

    Returns the run folder at once; a bad config raises ``ConfigError`` here, naming the key, before any process
    starts. ``nproc > 1`` launches the same run under torchrun (DDP, classify only).
    """
    resolved = resolve_config(config, overrides)
    task = resolved.get("task", "classify")
    if nproc > 1 and task != "classify":
        raise ConfigError(f"only classify runs train with DDP (nproc {nproc}); {task} runs use one device")
    run_dir = layout.new_run_dir(resolved.get("model") or task, task)
    (run_dir / layout.CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    layout.write_status(run_dir, {"state": "queued", "epoch": 0, "epochs": resolved.get("epochs") or 0,
                                  "task": task, "model": resolved.get("model"), "pid": None, "message": "starting"})
    pid = _launch(run_dir, ["train", "--config", str(run_dir / layout.CONFIG_FILE), "--run-dir", str(run_dir)], nproc)
    layout.update_status(run_dir, pid=pid, pgid=pid)
    return run_dir


def resume_run(run_dir: str | Path, *, nproc: int = 1) -> Path:
    """Continue an interrupted, cancelled or failed run from its ``last.pt``."""
    run_dir = layout.resolve_run(run_dir)
    status = layout.read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise layout.JobError(f"run {run_dir.name} is still {status['state']} (pid {status.get('pid')})")
    if status.get("state") == "done":
        raise layout.JobError(f"run {run_dir.name} is done; start a new run to train further")
    if not (run_dir / layout.CONFIG_FILE).exists():
        raise layout.JobError(f"run {run_dir.name} has no config.yaml to resume from")
    layout.update_status(run_dir, state="queued", message="resuming", pid=None)
    pid = _launch(run_dir, ["train", "--resume", str(run_dir)], nproc)
    layout.update_status(run_dir, pid=pid, pgid=pid)
    return run_dir


def cancel_run(run_dir: str | Path, timeout: float = 15.0) -> dict:
    """SIGTERM the run's process group (SIGKILL after ``timeout`` s); its status becomes ``cancelled``."""
    run_dir = layout.resolve_run(run_dir)
    status = layout.read_status(run_dir)
    pid = status.get("pid")
    if status.get("state") in ("done", "failed", "cancelled"):
        return status
    if status.get("state") in ("queued", "running") and layout.pid_alive(pid):
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            pgid = None
        # Never signal our own group: a run started from a terminal shares the shell's group.
        own_group = pgid == os.getpgrp()
        _signal(pid, pgid, signal.SIGTERM, own_group)
        deadline = time.monotonic() + timeout
        while layout.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if layout.pid_alive(pid):
            _signal(pid, pgid, signal.SIGKILL, own_group)
            while layout.pid_alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
        _reap()
    status = layout.read_status_file(run_dir)
    if status.get("state") == "cancelled":  # the run said so itself (its SIGTERM handler)
        return status
    return layout.update_status(run_dir, state="cancelled", message="cancelled by user", eta_s=None)


def _signal(pid: int, pgid: int | None, sig: int, own_group: bool) -> None:
    try:
        if pgid and not own_group:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def delete_run(run_dir: str | Path) -> Path:
    """Remove a run folder; a running or promoted run is refused (cancel it, or promote another, first)."""
    run_dir = layout.resolve_run(run_dir)
    status = layout.read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise layout.JobError(f"run {run_dir.name} is {status['state']}: cancel it before deleting it")
    for task in ("classify", "detect", "landmarks"):
        info = promotion.promoted_info(task)
        if info and info.get("run_id") == run_dir.name:
            raise layout.JobError(f"run {run_dir.name} is the promoted {task} model: promote another run first")
    shutil.rmtree(run_dir)
    return run_dir


# ---------------------------------------------------------------------------------------------- CLI
def configure_runs(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = sub.add_parser("list", help="every run of every task with its main metric (the default)")
    listing.add_argument("--json", action="store_true", help="one JSON object per run")
    start = sub.add_parser("start", help="validate a config and train it in the background")
    start.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    start.add_argument("overrides", nargs="*", metavar="key=value")
    start.add_argument("--nproc", type=int, default=1, help="processes under torchrun (DDP), classify only")
    for name, text in (("status", "state, epoch, ETA and the last metrics row"), ("cancel", "stop a running run"),
                       ("resume", "continue from last.pt"), ("delete", "remove the run folder"),
                       ("promote", "make the run the model Predict uses")):
        action = sub.add_parser(name, help=text)
        action.add_argument("run", help="run folder or run id")
        if name == "status":
            action.add_argument("--json", action="store_true")
    parser.set_defaults(json=False)


def run_runs(args: argparse.Namespace) -> int:
    try:
        action = args.action or "list"
        if action == "list":
            return _print_runs(args.json)
        if action == "start":
            run_dir = start_run(args.config, args.overrides, nproc=args.nproc)
            print(run_dir)
        elif action == "status":
            _print_status(args.run, args.json)
        elif action == "cancel":
            print(f"{args.run}: {cancel_run(args.run).get('state')}")
        elif action == "resume":
            print(resume_run(args.run))
        elif action == "delete":
            print(f"deleted {delete_run(args.run)}")
        elif action == "promote":
            print(f"promoted {Path(args.run).name} -> {promotion.promote(args.run)}")
    except (ConfigError, layout.JobError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _print_runs(as_json: bool) -> int:
    runs = layout.list_runs()
    if as_json:
        for info in runs:
            print(json.dumps(asdict(info)))
        return 0
    if not runs:
        print(f"no runs in {settings.runs_dir()}")
        return 0
    print(f"{'run':<46} {'task':<9} {'model':<16} {'state':<11} {'epoch':>7}  main metric")
    for r in runs:
        best = f"{r.metric or 'best'} {r.best_metric:.4f}" if r.best_metric is not None else "-"
        print(f"{r.run_id:<46} {r.task:<9} {r.model[:16]:<16} {r.state:<11} {f'{r.epoch}/{r.epochs}':>7}  {best}")
    return 0


def _print_status(run: str, as_json: bool) -> None:
    run_dir = layout.resolve_run(run)
    status = layout.read_status(run_dir)
    metrics = layout.read_metrics(run_dir)
    last = {k: v for k, v in metrics.iloc[-1].to_dict().items() if v == v} if len(metrics) else {}
    if as_json:
        print(json.dumps({"status": status, "last_metrics": last}, default=str))
        return
    eta = status.get("eta_s")
    print(f"{run_dir.name}: {status.get('state')} · epoch {status.get('epoch', 0)}/{status.get('epochs', 0)}"
          + (f" · about {float(eta):.0f} s left" if isinstance(eta, (int, float)) and eta else "")
          + (f" · {status.get('metric') or 'best'} {status['best_metric']}" if status.get("best_metric") is not None
             else ""))
    print(f"  {status.get('message', '')}")
    if last:
        print("  last epoch: " + ", ".join(f"{k} {v}" for k, v in last.items()))
