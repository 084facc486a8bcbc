"""Run control: start, resume, cancel and delete background runs of every task (`python -m core runs ...`).

A run is ``python -m core train ...`` started in its own session (so it owns a process group), with
``OMP_NUM_THREADS`` set explicitly and its stdout/stderr appended to the run's ``train.log``. It writes its run folder
(``core.runs.recorder``); this module, the pages and the ``runs`` command only read it, so a run started by one
process is watched and cancelled from any other, and runs survive page reloads and server restarts.
Cancel = SIGTERM to the process group; resume = ``train --resume RUN`` from ``last.pt``. Only configs are imported
here (a subprocess does the training), so starting a run never loads torch.

Every start and resume goes through the queue (``core.runs.queue``): a run waits while its device is busy and starts
by itself when a slot frees. Each ``runs`` command advances the queue too.

Every verb here takes a run id, or the path of a run folder directly under the workspace's ``runs/``
(``layout.run_path``): nothing else, so no verb reaches ``runs/`` itself, the workspace or a folder elsewhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from core import settings
from core.data.accounts import authorize
from core.runs import hardware, layout, promotion, queue, registry
from core.runs.configs import ConfigError
from core.runs.registry import resolve_config

def start_run(config: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), *, nproc: int = 1,
              actor=None) -> Path:
    """Validate a config (file or dict) plus ``key=value`` overrides, then queue it to train in the background.

    Returns the run folder at once; a bad config raises ``ConfigError`` here, naming the key, before any process
    starts. The run starts now when its device has a free slot, else it waits in the queue (``core.runs.queue``).
    ``nproc > 1`` launches the same run under torchrun (DDP, classify only).
    """
    authorize(actor, "start_run", str(config))
    resolved = resolve_config(config, overrides)
    task = resolved.get("task", "classify")
    if nproc > 1 and not registry.spec(task).distributed:
        raise ConfigError(f"only {', '.join(n for n, s in registry.TASKS.items() if s.distributed)} runs train with "
                          f"DDP (nproc {nproc}); {task} runs use one device")
    data = data_record(resolved)

    def prepare(staging: Path, run_dir: Path) -> None:
        (staging / layout.CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
        if data:
            layout.atomic_write_text(staging / hardware.DATA_FILE, json.dumps(data, indent=1))
        layout.write_status(staging, {"epoch": 0, "epochs": resolved.get("epochs") or 0, "task": task,
                                      "model": resolved.get("model"), "message": "waiting"})
        queue.enqueue(staging, ["train", "--config", str(run_dir / layout.CONFIG_FILE), "--run-dir", str(run_dir)],
                      hardware.device_key(resolved), nproc)

    run_dir = layout.new_run_dir(resolved.get("model") or task, task, prepare)
    queue.advance()
    return run_dir


def data_record(config: Mapping[str, Any]) -> dict | None:
    """The labels a run starts on: a fingerprint (sha256 over every labelled image's content hash, split and
    current label), and images, patients and class counts per split. None when the data is not a store dataset."""
    from core.data.store import AnnotationStore

    if config.get("data"):  # a YOLO data.yaml on disk, not a store dataset
        return None
    dataset = config.get("dataset") or (None if config.get("quick") or config.get("full") else "default")
    if not dataset:
        return None
    with AnnotationStore(settings.db_url()) as store:
        items = [i for i in store.current_labels(dataset) if i.label_id is not None]
    if not items:
        return None
    digest = hashlib.sha256()
    split_digests: dict[str, Any] = {}
    splits: dict[str, dict] = {}
    for item in sorted(items, key=lambda i: i.sha256):
        landmarks = None if item.landmarks is None else [[round(float(v), 2) for v in p] for p in item.landmarks]
        line = json.dumps([item.sha256, item.split, item.curvature_class, item.roi_box, landmarks]).encode()
        digest.update(line)
        split_digests.setdefault(item.split or "unsplit", hashlib.sha256()).update(line)
        split = splits.setdefault(item.split or "unsplit", {"images": 0, "patients": set(), "classes": {}})
        split["images"] += 1
        split["patients"].add(item.patient_id)
        if item.curvature_class:
            split["classes"][item.curvature_class] = split["classes"].get(item.curvature_class, 0) + 1
    for split in splits.values():
        split["patients"] = len(split["patients"])
    return {"dataset": dataset, "fingerprint": digest.hexdigest()[:16], "labelled_images": len(items),
            "patients": len({i.patient_id for i in items}), "splits": splits,
            "split_fingerprints": {name: d.hexdigest()[:16] for name, d in split_digests.items()},
            "train_split": config.get("train_split", "train"), "recorded_at": layout.now_iso()}


def resume_run(run_dir: str | Path, *, nproc: int = 1, actor=None) -> Path:
    """Continue an interrupted, cancelled or failed run from its ``last.pt`` (through the queue)."""
    authorize(actor, "resume_run", str(run_dir))
    run_dir = layout.run_path(run_dir)
    status = layout.read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise layout.JobError(f"run {run_dir.name} is still {status['state']} (pid {status.get('pid')})")
    if status.get("state") == "done":
        raise layout.JobError(f"run {run_dir.name} is done: continue it for more epochs as a new run instead "
                              f"(python -m core runs continue {run_dir.name} --epochs N)")
    if not (run_dir / layout.CONFIG_FILE).exists():
        raise layout.JobError(f"run {run_dir.name} has no config.yaml to resume from")
    queue.enqueue(run_dir, ["train", "--resume", str(run_dir)], hardware.device_key(layout.read_config(run_dir)),
                  nproc, message="waiting to resume")
    queue.advance()
    return run_dir


def continue_config(run_dir: str | Path, epochs: int, changes: Mapping[str, Any] | None = None) -> dict:
    """A new run's config: the old run's, started from its last checkpoint, for ``epochs`` more epochs with a
    fresh schedule (warm-up and decay over the new epochs). ``changes`` overrides other keys (e.g. lr)."""
    run_dir = layout.run_path(run_dir)
    config = layout.read_config(run_dir)
    task = config.get("task", "classify")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ConfigError(f"epochs to continue for must be a whole number >= 1, got {epochs!r}")
    spec = registry.spec(task)
    if not spec.continuable:
        raise ConfigError(f"a {spec.title.lower()} run cannot be continued: start a new one with more epochs")
    if spec.trainer(config).continues_from == "checkpoint":
        if not any((run_dir / name).exists() for name in ("last.pt", "best.pt")):
            raise layout.JobError(f"run {run_dir.name} has no checkpoint (last.pt) to continue from")
        config.update(init_from=str(run_dir))
    else:  # YOLO: a new Ultralytics run starting from the weights of the old one's last epoch
        weights = run_dir / "ultralytics" / "weights" / "last.pt"
        if not weights.exists():
            raise layout.JobError(f"run {run_dir.name} has no {weights.relative_to(run_dir)} to continue from")
        config.update(model=str(weights))
    config.update(dict(changes or {}), epochs=epochs)
    return resolve_config(config)


def continue_run(run_dir: str | Path, epochs: int, changes: Mapping[str, Any] | None = None, *, actor=None) -> Path:
    """Train ``epochs`` more epochs as a new run starting from ``run_dir``'s last checkpoint (queued as usual)."""
    return start_run(continue_config(run_dir, epochs, changes), actor=actor)


def cancel_run(run_dir: str | Path, timeout: float = 15.0, *, actor=None) -> dict:
    """SIGTERM the run's process group (SIGKILL after ``timeout`` s); its status becomes ``cancelled``.
    A run still waiting in the queue is taken out of it."""
    authorize(actor, "cancel_run", str(run_dir))
    run_dir = layout.run_path(run_dir)
    waiting = queue.cancel_waiting(run_dir)
    if waiting is not None:
        return waiting
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
    status = layout.read_status_file(run_dir)
    if status.get("state") != "cancelled":  # else the run said so itself (its SIGTERM handler)
        status = layout.update_status(run_dir, state="cancelled", message="cancelled by user", eta_s=None)
    queue.advance()  # its supervisor normally does this; not when it was killed too
    return status


def _signal(pid: int, pgid: int | None, sig: int, own_group: bool) -> None:
    try:
        if pgid and not own_group:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def delete_run(run_dir: str | Path, *, actor=None) -> Path:
    """Remove a run folder; a running or promoted run is refused (cancel it, or promote another, first)."""
    authorize(actor, "delete_run", str(run_dir))
    run_dir = layout.run_path(run_dir)
    status = layout.read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        raise layout.JobError(f"run {run_dir.name} is {status['state']}: cancel it before deleting it")
    for task in registry.PROMOTABLE:
        info = promotion.promoted_info(task)
        if info and info.get("run_id") == run_dir.name:
            raise layout.JobError(f"run {run_dir.name} is the promoted {task} model: promote another run first")
    shutil.rmtree(run_dir)
    return run_dir
