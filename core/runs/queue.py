"""The run queue: at most ``slots`` runs per device at a time (1 by default); the rest wait, in order, and start by
themselves. Torch-free, and kept in the run folders themselves, so it works with no page open and no server.

A waiting run is an ordinary run folder whose status says ``state: queued`` with ``queued_at``, a
``queue_position``, the ``device`` it needs and the ``launch`` arguments, and no pid (``layout.read_status`` reads
that as waiting, not dead). ``advance()`` starts the first waiting runs whose device has a free slot. It runs:

1. when a run's training process exits (done, failed or cancelled): each run is started under a small supervisor
   (``python -m core.runs.queue RUN -- CMD``) that waits for its child and then advances the queue;
2. on every ``python -m core runs ...`` command and every launch call (start, resume, cancel, delete);
3. on each poll of an open Train page, which also covers a supervisor killed with its run (SIGKILL, a reboot).

Each advance holds an exclusive lock (``$CERVICURVE_HOME/.queue.lock``), so a page and a terminal advancing at once
never start the same run twice or overfill a device. The number of slots lives in ``$CERVICURVE_HOME/queue.json``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

from core import settings
from core.data.accounts import authorize
from core.runs import layout
from core.runs.hardware import device_key

QUEUE_FILE = "queue.json"
LOCK_FILE = ".queue.lock"
DEFAULT_SLOTS = 1

# Popen objects of supervisors this process started: polling them reaps finished children (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


# ---------------------------------------------------------------------------------------------- settings
def slots() -> int:
    """How many runs may train on one device at a time."""
    try:
        value = json.loads((settings.home() / QUEUE_FILE).read_text(encoding="utf-8")).get("slots_per_device")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_SLOTS
    return value if isinstance(value, int) and value >= 1 else DEFAULT_SLOTS


def set_slots(count: int) -> int:
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise layout.JobError(f"slots per device must be a whole number >= 1, got {count!r}")
    layout.atomic_write_text(settings.home() / QUEUE_FILE, json.dumps({"slots_per_device": count}))
    return count


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One queue decision at a time across every process using this workspace."""
    with open(settings.home() / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------- reading
def is_waiting(status: dict) -> bool:
    return status.get("state") == "queued" and bool(status.get("queued_at")) and not status.get("pid")


def waiting() -> list[tuple[Path, dict]]:
    """Waiting runs in queue order (position, then time queued)."""
    found = []
    for run_dir in layout.run_dirs():
        status = layout.read_status_file(run_dir)
        if is_waiting(status):
            found.append((run_dir, status))
    return sorted(found, key=lambda item: (float(item[1].get("queue_position") or 0), str(item[1]["queued_at"])))


def occupied() -> Counter:
    """Device -> how many live runs train on it now (started by the queue or by hand)."""
    busy: Counter = Counter()
    for run_dir in layout.run_dirs():
        raw = layout.read_status_file(run_dir)
        if raw.get("state") not in ("queued", "running") or is_waiting(raw):
            continue
        if layout.read_status(run_dir).get("state") in ("queued", "running"):  # alive, fresh heartbeat
            busy[raw.get("device") or device_key(layout.read_config(run_dir))] += 1
    return busy


# ---------------------------------------------------------------------------------------------- changing
def enqueue(run_dir: Path, args: Sequence[str], device: str, nproc: int = 1, **status) -> dict:
    """Put a run at the end of the queue; ``advance()`` starts it when ``device`` has a free slot."""
    with locked():
        last = max([float(s.get("queue_position") or 0) for _, s in waiting()], default=0.0)
        return layout.update_status(run_dir, **status, state="queued", pid=None, pgid=None, device=device,
                                    queued_at=layout.now_iso(), queue_position=last + 1,
                                    launch={"args": list(args), "nproc": int(nproc)})


def move(run: str | Path, position: int, *, actor=None) -> list[str]:
    """Move a waiting run to ``position`` (1 = next to start); returns the queue's run ids in the new order."""
    authorize(actor, "start_run", f"queue {run} -> {position}")
    run_dir = layout.resolve_run(run)
    with locked():
        order = [d for d, _ in waiting()]
        if run_dir not in order:
            raise layout.JobError(f"run {run_dir.name} is not waiting in the queue")
        if not isinstance(position, int) or position < 1:
            raise layout.JobError(f"queue position must be a whole number >= 1, got {position!r}")
        order.remove(run_dir)
        order.insert(min(position, len(order) + 1) - 1, run_dir)
        for number, other in enumerate(order, start=1):
            layout.update_status(other, queue_position=float(number))
    return [d.name for d in order]


def cancel_waiting(run_dir: Path) -> dict | None:
    """Cancel a run that is still waiting (under the lock, so it cannot start meanwhile); None if it is not."""
    with locked():
        status = layout.read_status_file(run_dir)
        if not is_waiting(status):
            return None
        return layout.update_status(run_dir, state="cancelled", message="cancelled while queued", queued_at=None,
                                    queue_position=None, eta_s=None)


def advance() -> list[Path]:
    """Start every waiting run whose device has a free slot, in queue order; returns the runs started."""
    _reap()
    if not waiting():  # the common case on every poll: no lock, no process listing
        return []
    started = []
    with locked():
        limit, busy = slots(), occupied()
        for run_dir, status in waiting():
            device = status.get("device") or "cpu"
            if busy[device] >= limit:
                continue
            launch = status.get("launch") or {}
            if not launch.get("args"):
                layout.update_status(run_dir, state="failed", queued_at=None,
                                     message="queued without launch arguments (written by an older version)")
                continue
            pid = spawn(run_dir, launch["args"], int(launch.get("nproc") or 1))
            layout.update_status(run_dir, pid=pid, pgid=pid, queued_at=None, queue_position=None,
                                 started_at=layout.now_iso(), message="starting")
            busy[device] += 1
            started.append(run_dir)
    return started


# ---------------------------------------------------------------------------------------------- processes
def _reap() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def child_env() -> dict[str, str]:
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


def train_command(args: Sequence[str], nproc: int = 1) -> list[str]:
    if nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "core", *args]
    return [sys.executable, "-m", "core", *args]


def spawn(run_dir: Path, args: Sequence[str], nproc: int = 1) -> int:
    """Start ``python -m core ARGS`` under its supervisor, in a new session (its own process group), output
    appended to the run's train.log; returns the supervisor's pid (the group id)."""
    _reap()
    cmd = train_command(args, nproc)
    with open(run_dir / layout.LOG_FILE, "ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "core.runs.queue", str(run_dir), "--", *cmd],
                                cwd=layout.REPO_ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    return proc.pid


def supervise(run_dir: Path, cmd: list[str]) -> int:
    """Run a training command, then advance the queue: the next run starts when this one ends, however it ends."""
    # SIGTERM (cancel) reaches the whole group: the child handles it; the supervisor outlives it to advance.
    # A handler rather than SIG_IGN: an ignored signal would stay ignored in the exec'd child.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    child = subprocess.Popen(cmd, cwd=layout.REPO_ROOT, stdin=subprocess.DEVNULL)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    status = layout.read_status_file(run_dir)
    if status.get("state") == "queued" and status.get("pid") in (os.getpid(), child.pid):
        # the child died before its run began (an import error, a signal): say so instead of "interrupted"
        layout.update_status(run_dir, state="failed", eta_s=None,
                             message=f"the training process exited with code {code} before the run began; "
                                     "see train.log")
    time.sleep(0.2)  # let the child's last status write land before the next run reads the device as free
    advance()
    return code


if __name__ == "__main__":
    # python -m core.runs.queue RUN_DIR -- CMD ...
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: python -m core.runs.queue RUN_DIR -- COMMAND ...", file=sys.stderr)
        sys.exit(2)
    sys.exit(supervise(Path(sys.argv[1]), sys.argv[3:]))
