"""Run-folder I/O of a training process: status, config, metrics.csv, checkpoints, train.log, SIGTERM.

Shared by ``core.training.classify`` and ``core.training.landmarks``; only rank 0 writes (:class:`RunFiles`).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml

from core.runs import launch, layout
from core.training.checkpoints import save_checkpoint
from core.runs.configs import to_plain

# the run's logger, shared with core.training.classify and core.training.crops: run_logging sends it to train.log
log = logging.getLogger("cervicurve.train")

METRIC_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1", "lr", "seconds")


class RunCancelled(Exception):
    """SIGTERM reached the training process (launch.cancel_run)."""


class RunFiles:
    """Rank 0's writer for one run folder; other ranks get a writer that does nothing."""

    def __init__(self, run_dir: Path, active: bool):
        self.run_dir, self.active = Path(run_dir), active
        self.status: dict = {}

    def status_update(self, **changes: Any) -> None:
        if not self.active:
            return
        if not self.status:
            self.status = layout.read_status_file(self.run_dir)
        self.status.update(changes)
        self.status = layout.write_status(self.run_dir, self.status)

    def write_config(self, cfg_dict: dict) -> None:
        if self.active:
            layout.atomic_write_text(self.run_dir / layout.CONFIG_FILE, yaml.safe_dump(cfg_dict, sort_keys=False))

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
        rows = [r for r in self.metrics_rows() if int(r["epoch"]) <= epoch]
        text = ",".join(METRIC_COLUMNS) + "\n" + "".join(",".join(r[c] for c in METRIC_COLUMNS) + "\n" for r in rows)
        layout.atomic_write_text(self.run_dir / layout.METRICS_FILE, text)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        if not self.active:
            return
        path = self.run_dir / layout.METRICS_FILE
        new = not path.exists() or path.stat().st_size == 0
        with open(path, "a", encoding="utf-8") as handle:
            if new:
                handle.write(",".join(METRIC_COLUMNS) + "\n")
            handle.write(",".join(_fmt(row[c]) for c in METRIC_COLUMNS) + "\n")

    def save(self, name: str, payload: dict) -> None:
        if self.active:
            save_checkpoint(self.run_dir / name, payload)

    def write_json(self, name: str, data: Any) -> None:
        if self.active:
            layout.atomic_write_text(self.run_dir / name, json.dumps(to_plain(data), indent=1))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@contextlib.contextmanager
def run_logging(run_dir: Path, active: bool):
    """train.log for this run (plus stderr, unless stderr already is train.log, as under jobs)."""
    handlers: list[logging.Handler] = []
    if active:
        log_path = run_dir / layout.LOG_FILE
        file_handler = logging.FileHandler(log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
        if not _stderr_is(log_path):
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(logging.Formatter("%(message)s"))
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

    def check(self) -> None:
        if self.requested:
            raise self.exception("cancelled (SIGTERM)")


@contextlib.contextmanager
def cancel_on_sigterm(exception: type[BaseException] = RunCancelled):
    """SIGTERM (launch.cancel_run, the app's cancel button) becomes ``exception`` in the main thread, so the run
    can say 'cancelled' rather than die silently. Yields a :class:`CancelRequest`.

    The handler raises at once, except inside a finalizer (``__del__``, e.g. a ZipFile being collected): Python
    ignores exceptions there (measured: a demo cancelled early in its detector step ran to the end). So the
    request is also remembered: ``check()`` at safe points, and leaving the block, raise it then.
    """
    import threading

    request = CancelRequest(exception)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        request.requested = True
        while frame is not None:
            if frame.f_code.co_name == "__del__":
                return  # raising here would only print "Exception ignored"; check() raises it later
            frame = frame.f_back
        raise exception("cancelled (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield request
        request.check()
    finally:
        signal.signal(signal.SIGTERM, previous)
