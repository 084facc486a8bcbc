"""One epoch loop for every torch task: resume, checkpoints, patience, time limit, the run's files, cancel.

A task trains through :class:`Trainer` by filling in :class:`EpochTask`'s hooks: ``train_epoch`` (one pass over its
data), ``validate`` (the validation scores), ``state`` / ``load_state`` (what last.pt holds besides the loop's own
counters: weights, optimizer, scheduler) and ``best_payload`` (best.pt). The loop owns everything else, once:

- resume from last.pt (one layout for every task: the task's state plus ``epoch``, ``best_metric``, ``best_epoch``,
  ``epochs_since_best``, ``finished``), dropping the metrics rows of epochs that last.pt does not hold;
- the monitored score, better up or down, and patience (0: never stop early);
- a time budget (``time_limit_s``): stop when another epoch of average length would overrun it;
- per epoch, in this order: the metrics row, the checkpoints (``RunRecorder.save_epoch``), the status, the cancel
  check (a crash between row and checkpoint redoes the epoch; the resume drops the row);
- under DDP only rank 0 validates and writes; the others learn whether to stop from it.

Ultralytics keeps its own loop (``core.training.detect``) behind the same recorder.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from core.runs.recorder import RunRecorder

log = logging.getLogger("cervicurve.run")
LAST = "last.pt"
COUNTERS = {"epoch", "best_metric", "best_epoch", "epochs_since_best", "finished"}  # the loop's part of last.pt


class EpochTask:
    """What a task fills in; the Trainer calls these in epoch order."""

    def start_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (a resumed run draws the same batches as an uninterrupted one)."""

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training data; returns the row's training columns (loss, lr, ...)."""
        raise NotImplementedError

    def validate(self, epoch: int) -> dict[str, Any]:
        """The row's validation columns; must hold the monitored metric."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        """last.pt's task part: weights, optimizer, scheduler, meta (tensors may be live: written at once)."""
        raise NotImplementedError

    def load_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def best_payload(self) -> dict[str, Any]:
        """best.pt: ``{"state_dict", "meta"}`` with the weights copied (it may be written epochs later)."""
        raise NotImplementedError

    def message(self, epoch: int, epochs: int, row: Mapping[str, Any], improved: bool) -> str:
        return f"epoch {epoch}/{epochs}"


@dataclass
class Outcome:
    epochs_run: int
    best_metric: float | None
    best_epoch: int
    stopped_early: bool


class Trainer:
    def __init__(self, run: RunRecorder, task: EpochTask, *, epochs: int, metric: str, higher_is_better: bool,
                 patience: int = 0, time_limit_s: float = 0.0, is_main: bool = True,
                 share_stop: Callable[[bool], bool] | None = None,
                 on_epoch: Callable[[int, int, dict], None] | None = None):
        self.run, self.task, self.epochs, self.metric = run, task, epochs, metric
        self.higher_is_better, self.patience, self.time_limit_s = higher_is_better, patience, time_limit_s
        self.is_main, self.share_stop, self.on_epoch = is_main, share_stop, on_epoch

    def _better(self, value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best + 1e-9 if self.higher_is_better else value < best - 1e-9

    def fit(self, resume: bool = False) -> Outcome:
        epoch, best, best_epoch, since_best, finished = 0, None, 0, 0, False
        last_path = Path(self.run.run_dir) / LAST
        state = torch.load(last_path, map_location="cpu", weights_only=True) if resume and last_path.exists() else None
        if state is not None and not COUNTERS <= set(state):
            # a last.pt this loop did not write (an older layout, a hand-made file): say so and start again
            log.warning("last.pt lacks %s (another layout)", ", ".join(sorted(COUNTERS - set(state))))
            state = None
        if state is not None:
            self.task.load_state(state)
            epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
            best = None if state.get("best_metric") is None else float(state["best_metric"])
            since_best, finished = int(state["epochs_since_best"]), bool(state.get("finished"))
            self.run.keep_metrics_until(epoch)
            log.info("resumed from last.pt after epoch %d (best %s %s at epoch %d)", epoch, self.metric,
                     "-" if best is None else f"{best:.4f}", best_epoch)
        elif resume:
            log.info("resume asked, but no usable last.pt: starting from epoch 1")
            self.run.keep_metrics_until(0)

        epoch_times: list[float] = []
        stopped_early = False
        while epoch < self.epochs and not finished:
            epoch += 1
            started = time.perf_counter()
            self.task.start_epoch(epoch)
            self.run.update(epoch=epoch - 1, message=f"epoch {epoch}/{self.epochs}")
            row: dict[str, Any] = {"epoch": epoch, **self.task.train_epoch(epoch)}
            stop = False
            if self.is_main:
                row.update(self.task.validate(epoch))
                seconds = time.perf_counter() - started
                row["seconds"] = round(seconds, 3)
                epoch_times.append(seconds)
                value = float(row[self.metric])
                improved = self._better(value, best)
                if improved:
                    best, best_epoch, since_best = value, epoch, 0
                else:
                    since_best += 1
                stopped_early = bool(self.patience and since_best >= self.patience)
                over_time = bool(self.time_limit_s and epoch < self.epochs
                                 and sum(epoch_times) + sum(epoch_times) / len(epoch_times) > self.time_limit_s)
                stop = stopped_early or over_time
                ending = stop or epoch >= self.epochs
                self.run.append_metrics(row)
                counters = {"epoch": epoch, "best_metric": best, "best_epoch": best_epoch,
                            "epochs_since_best": since_best, "finished": ending}
                self.run.save_epoch(lambda: {**self.task.state(), **counters},
                                    best=self.task.best_payload() if improved else None, final=ending)
                self.run.epoch_status(epoch, self.epochs, seconds, best_metric=best, finished=stop,
                                      message=self.task.message(epoch, self.epochs, row, improved))
                if over_time:
                    log.info("time limit: %.0f s used of time_limit_s %.0f; stopping after epoch %d",
                             sum(epoch_times), self.time_limit_s, epoch)
                elif stopped_early:
                    log.info("early stop: no better %s for %d epochs (best %.4f at epoch %d)", self.metric,
                             since_best, best, best_epoch)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, self.epochs, row)
            if self.share_stop is not None:
                stop = self.share_stop(stop)
            self.run.check_cancel()  # after the checkpoints: a resume continues from the last one written
            finished = stop
        return Outcome(epoch, best, best_epoch, stopped_early)
