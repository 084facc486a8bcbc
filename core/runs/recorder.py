"""One run-folder writer for every task: status with heartbeat, metrics.csv, train.log, checkpoints, SIGTERM.

A trainer does its work inside ``with RunRecorder(run_dir, task, columns) as run:`` and calls
``run.append_metrics(row)``, ``run.save_epoch(...)`` (best.pt and last.pt) and ``run.epoch_status(...)`` per epoch
(in that order: a crash between the row and last.pt redoes the epoch, and the resume drops the row),
``run.save(...)`` for other checkpoints and ``run.done(...)`` at the end. Whatever
goes wrong inside the block ends the run the same way for every task: SIGTERM (``runs cancel``) -> ``cancelled``;
any exception, setup errors included (device, DDP, data) -> ``failed`` with the message in status.json and the
traceback in train.log. Under DDP only rank 0 writes (``active=False`` elsewhere).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from core.runs import layout
from core.runs.configs import to_plain

# Every trainer logs here; inside a RunRecorder it goes to the run's train.log.
log = logging.getLogger("cervicurve.run")


# last.pt (and a pending best.pt) are written at most this often, and always after the first and the last epoch:
# ResNet-152's last.pt with its AdamW state is 700 MB, ~1.2 s to write, more than a whole epoch on a GPU. A crash
# or cancel costs at most this much training; the resume redoes those epochs and drops their rows.
CHECKPOINT_EVERY_S = 30.0


class RunCancelled(Exception):
    """SIGTERM reached the training process (``runs cancel``)."""


def save_checkpoint(path: Path, payload: dict) -> None:
    """Written beside, then renamed: a run killed mid-save keeps its previous checkpoint whole."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


class RunRecorder:
    """Writes one run folder; ``columns`` are the task's metric columns after ``layout.COMMON_COLUMNS``."""

    def __init__(self, run_dir: str | Path, task: str, columns: Iterable[str] = (), *, model: str = "",
                 metric: str = "", active: bool = True):
        self.run_dir = Path(run_dir)
        self.task, self.model, self.metric, self.active = task, model, metric, active
        self.columns = tuple(layout.COMMON_COLUMNS) + tuple(c for c in columns if c not in layout.COMMON_COLUMNS)
        self.status: dict = {}
        self.epoch_seconds: list[float] = []
        self._lock = threading.Lock()
        self._stop_beat = threading.Event()
        self._exit = contextlib.ExitStack()
        self.cancel: CancelRequest | None = None
        self.checkpoint_every_s = CHECKPOINT_EVERY_S
        self._pending_best: dict | None = None
        self._checkpointed_at: float | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "RunRecorder":
        if self.active:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._exit.enter_context(run_logging(self.run_dir, self.active))
        self.cancel = self._exit.enter_context(cancel_on_sigterm())
        self.update(state="running", task=self.task, model=self.model, metric=self.metric, pid=os.getpid(),
                    pgid=os.getpgrp(), eta_s=None, message="starting")
        if self.active:
            beat = threading.Thread(target=self._heartbeat, name="cervicurve-heartbeat", daemon=True)
            beat.start()
            self._exit.callback(beat.join, 2.0)
            self._exit.callback(self._stop_beat.set)
        return self

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if isinstance(error, (RunCancelled, KeyboardInterrupt)):
                log.info("cancelled")
                self.update(state="cancelled", message="cancelled by user", eta_s=None)
            elif isinstance(error, ValueError):  # a refused config or dataset (ConfigError...): one line says it,
                # in train.log; on a terminal the command's own "error: ..." line is that one line
                log.error("run failed: %s", error, extra={"file_only": True})
                self.update(state="failed", message=str(error), eta_s=None)
            elif error is not None:
                log.error("run failed", exc_info=(kind, error, tb))
                self.update(state="failed", message=f"{type(error).__name__}: {error}", eta_s=None)
            elif self.status.get("state") == "running":
                self.update(state="done", eta_s=0.0)
        finally:
            self._stop_beat.set()
            self._exit.close()
        return False

    def _heartbeat(self) -> None:
        # A long epoch writes no status for minutes; the heartbeat tells it from a hung or dead process.
        while not self._stop_beat.wait(layout.HEARTBEAT_S):
            self.update()

    # ------------------------------------------------------------------ status
    def update(self, **changes: Any) -> None:
        if not self.active:
            return
        with self._lock:
            if not self.status:
                self.status = layout.read_status_file(self.run_dir)
            self.status.update(changes)
            self.status["heartbeat"] = time.time()
            self.status = layout.write_status(self.run_dir, self.status)

    def done(self, message: str = "done", **extra: Any) -> None:
        self.update(state="done", eta_s=0.0, message=message, **extra)

    def check_cancel(self) -> None:
        """Raise RunCancelled here if SIGTERM arrived while the handler could not raise (see cancel_on_sigterm)."""
        if self.cancel is not None:
            self.cancel.check()

    def hold_cancel(self) -> None:
        """From here until ``release_cancel()`` a SIGTERM is remembered, not raised: for a window in which a
        trainer we do not own saves its checkpoint before our metrics row, so a cancel cannot fall between them."""
        if self.cancel is not None:
            self.cancel.held = True

    def release_cancel(self) -> None:
        if self.cancel is not None:
            self.cancel.held = False
            self.cancel.check()

    # ------------------------------------------------------------------ files
    def write_config(self, config: Mapping[str, Any]) -> None:
        if self.active:
            layout.atomic_write_text(self.run_dir / layout.CONFIG_FILE,
                                     yaml.safe_dump(to_plain(dict(config)), sort_keys=False))

    def save(self, name: str, payload: dict) -> None:
        if self.active:
            save_checkpoint(self.run_dir / name, payload)

    def save_epoch(self, last: Callable[[], dict], best: dict | None = None, final: bool = False) -> None:
        """An epoch's checkpoints: ``best`` (its payload when the epoch improved, weights copied) is held until
        ``last()`` is written with it, after the first epoch, then at most every ``checkpoint_every_s``, and always
        when ``final``; so best.pt and last.pt on disk always belong to the same moment."""
        if best is not None:
            self._pending_best = best
        now = time.monotonic()
        if not (final or self._checkpointed_at is None or now - self._checkpointed_at >= self.checkpoint_every_s):
            return
        if self._pending_best is not None:
            self.save("best.pt", self._pending_best)
            self._pending_best = None
        self.save("last.pt", last())
        self._checkpointed_at = time.monotonic()

    def write_json(self, name: str, data: Any) -> None:
        if self.active:
            layout.atomic_write_text(self.run_dir / name, json.dumps(to_plain(data), indent=1, default=str))

    # ------------------------------------------------------------------ metrics.csv
    def metrics_rows(self) -> list[dict]:
        path = self.run_dir / layout.METRICS_FILE
        if not path.exists():
            return []
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def keep_metrics_until(self, epoch: int) -> None:
        """After a resume, drop rows of epochs that finished after the checkpoint (they will be redone)."""
        if not self.active:
            return
        rows = [r for r in self.metrics_rows() if r.get("epoch") not in (None, "") and int(float(r["epoch"])) <= epoch]
        self.epoch_seconds = [float(r["seconds"]) for r in rows if _is_number(r.get("seconds"))]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        layout.atomic_write_text(self.run_dir / layout.METRICS_FILE, text.getvalue())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        if not self.active:
            return
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"metrics columns {sorted(unknown)} are not in the {self.task} schema")
        path = self.run_dir / layout.METRICS_FILE
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c, "val" if c == "split" else None)) for c in self.columns})

    def epoch_status(self, epoch: int, epochs: int, seconds: float | None, *, best_metric: float | None = None,
                     message: str | None = None, finished: bool = False) -> None:
        """Status after a finished epoch (its metrics row and last.pt written first): epoch, ETA, best, a log line."""
        if _is_number(seconds):
            self.epoch_seconds.append(float(seconds))
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
        eta = 0.0 if finished or epoch >= epochs else None if mean is None else round(mean * (epochs - epoch), 1)
        message = message or f"epoch {epoch}/{epochs} done"
        changes: dict[str, Any] = {"epoch": epoch, "epochs": epochs, "eta_s": eta, "message": message}
        if best_metric is not None:
            changes["best_metric"] = round(float(best_metric), 6)
        self.update(**changes)
        log.info(message)


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


@contextlib.contextmanager
def run_logging(run_dir: Path, active: bool):
    """The run's log into train.log (plus stderr, unless stderr already is train.log, as for a background run)."""
    handlers: list[logging.Handler] = []
    if active:
        log_path = Path(run_dir) / layout.LOG_FILE
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
        if not _stderr_is(log_path):
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter("%(message)s"))
            stream.addFilter(lambda record: not getattr(record, "file_only", False))
            handlers.append(stream)
    for handler in handlers:
        log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(previous)


def _stderr_is(path: Path) -> bool:
    try:
        err, target = os.fstat(sys.stderr.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (err.st_dev, err.st_ino) == (target.st_dev, target.st_ino)


class CancelRequest:
    """Whether SIGTERM arrived; ``check()`` raises the cancel exception at a safe point if it did."""

    def __init__(self, exception: type[BaseException]):
        self.exception = exception
        self.requested = False
        self.held = False  # see RunRecorder.hold_cancel

    def check(self) -> None:
        if self.requested:
            raise self.exception("cancelled (SIGTERM)")


@contextlib.contextmanager
def cancel_on_sigterm(exception: type[BaseException] = RunCancelled):
    """SIGTERM (``runs cancel``, the app's cancel button) becomes ``exception`` in the main thread, so the run
    can say 'cancelled' rather than die silently. Yields a :class:`CancelRequest`.

    The handler raises at once. Landing inside a finalizer or a weakref callback (a ZipFile's ``__del__``,
    SQLAlchemy's ``_collection_gced``), the exception is swallowed by Python, which prints "Exception ignored"
    with a traceback (measured: a demo cancelled early in its detector step ran to the end). So the request is
    also remembered: ``check()`` at safe points, and leaving the block, raise it then; and for the block's
    length ``sys.unraisablehook`` drops that one swallowed exception silently.
    """
    request = CancelRequest(exception)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request.requested = True
        if request.held:
            return  # raised by release_cancel(), once the window it guards is closed
        raise exception("cancelled (SIGTERM)")

    def unraisable(info) -> None:
        if isinstance(info.exc_value, exception) and request.requested:
            return  # remembered: check() raises it at the next safe point
        previous_hook(info)

    previous, previous_hook = signal.signal(signal.SIGTERM, handler), sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield request
        request.check()
    finally:
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)
