"""Background runs as real processes: start, list, read, cancel, interrupt + resume, promote."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from core import settings
from core.runs import launch, layout, promotion
from core.cli import main as cli_main
from tests.helpers.tiny import FAST_CONFIG as FAST
from tests.helpers.tiny import import_tiny
from tests.helpers.wait import wait_for


@pytest.fixture()
def tiny(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")  # shared 2-core machine: one thread per run
    import_tiny(workspace)
    return workspace


def alive(pid: int) -> bool:
    return layout.pid_alive(pid)


@pytest.mark.slow
def test_started_run_finishes_in_the_background_and_can_be_promoted(tiny, capsys):
    run_dir = launch.start_run(dict(FAST, epochs=2))
    assert run_dir.parent == settings.runs_dir()
    first = layout.read_status(run_dir)
    assert first["state"] in ("queued", "running") and isinstance(first["pid"], int)

    wait_for(lambda: layout.read_status(run_dir)["state"] in ("done", "failed"))
    status = layout.read_status(run_dir)
    assert status["state"] == "done", (run_dir / "train.log").read_text()
    wait_for(lambda: not alive(first["pid"]), timeout=30)  # "done" is written just before the process exits
    metrics = layout.read_metrics(run_dir)
    assert list(metrics["epoch"]) == [1, 2] and "val_macro_f1" in metrics.columns
    log_text = (run_dir / "train.log").read_text()
    assert "python -m core train" in log_text or "-m core train" in log_text
    assert log_text.count("epoch 1/2  train_loss") == 1  # the logger does not double up with stderr

    [info] = layout.list_runs()
    assert (info.run_id, info.state, info.epoch, info.epochs, info.model) == (run_dir.name, "done", 2, 2, "cnn")
    assert cli_main(["runs"]) == 0
    assert run_dir.name in capsys.readouterr().out

    assert promotion.promoted_model("classify") is None
    assert cli_main(["promote", run_dir.name]) == 0
    promoted = promotion.promoted_model("classify")
    assert promoted == settings.promoted_dir() / "classify" / "best.pt"
    record = json.loads((promoted.parent / "promoted.json").read_text())
    assert record["run_id"] == run_dir.name and record["model"] == "cnn"
    assert torch.load(promoted, weights_only=True)["meta"]["model"] == "cnn"
    assert cli_main(["promote", "no-such-run"]) == 2


def test_a_bad_config_fails_before_any_process_starts(tiny):
    from core.runs.configs import ConfigError

    with pytest.raises(ConfigError, match="epochs"):
        launch.start_run(dict(FAST, epochs="many"))
    assert list(settings.runs_dir().iterdir()) == []


@pytest.mark.slow
def test_cancel_stops_the_process_group_and_marks_the_run_cancelled(tiny):
    run_dir = launch.start_run(dict(FAST, epochs=500))
    wait_for(lambda: layout.read_status(run_dir).get("epoch", 0) >= 1)
    pid = layout.read_status(run_dir)["pid"]
    assert alive(pid)

    status = launch.cancel_run(run_dir)
    assert status["state"] == "cancelled"
    assert not alive(pid)
    assert layout.read_status(run_dir)["state"] == "cancelled"
    assert "cancelled" in (run_dir / "train.log").read_text()
    assert [r.state for r in layout.list_runs()] == ["cancelled"]


@pytest.mark.slow
def test_a_killed_run_reads_as_interrupted_and_resumes_to_the_end(tiny):
    epochs = 6
    run_dir = launch.start_run(dict(FAST, epochs=epochs))
    wait_for(lambda: layout.read_status(run_dir).get("epoch", 0) >= 1)
    pid = layout.read_status(run_dir)["pid"]
    os.killpg(os.getpgid(pid), signal.SIGKILL)  # the machine "crashes"
    wait_for(lambda: not alive(pid))
    epochs_done = len(layout.read_metrics(run_dir))
    assert epochs_done < epochs, "killed too late to test a resume"

    assert layout.read_status(run_dir)["state"] == "interrupted"
    assert [r.state for r in layout.list_runs()] == ["interrupted"]
    launch.resume_run(run_dir)
    wait_for(lambda: layout.read_status(run_dir)["state"] in ("done", "failed"))
    assert layout.read_status(run_dir)["state"] == "done", (run_dir / "train.log").read_text()
    assert list(layout.read_metrics(run_dir)["epoch"]) == list(range(1, epochs + 1))


def test_unknown_runs_are_clear_errors(tiny):
    with pytest.raises(layout.JobError, match="no run .2020-nothing."):
        layout.read_status("2020-nothing")
    empty = layout.new_run_dir("cnn")
    with pytest.raises(layout.JobError, match="no best checkpoint"):
        promotion.promote(empty)


@pytest.mark.slow
def test_a_comparison_killed_mid_model_resumes_that_model_where_it_stopped(tiny):
    """compare --full runs for hours on a CPU: a kill (end of a session, a reboot) loses at most the epoch in
    flight, not the model. The member run resumes from its last.pt and records every epoch once."""
    epochs = 8
    run_dir = launch.start_run({"task": "compare", "models": ["svm", "cnn"], "dataset": "tiny", "epochs": epochs,
                                "input_size": 64, "batch_size": 4, "n_boot": 20})
    started = run_dir / "entries" / "02.started"  # the second model (cnn) has its member run

    def cnn_member_epochs():
        if not started.exists():
            return 0
        member = json.loads(started.read_text())["run_dirs"][0]
        return len(layout.read_metrics(member)) if (Path(member) / layout.METRICS_FILE).exists() else 0

    wait_for(lambda: cnn_member_epochs() >= 2)
    pid = layout.read_status(run_dir)["pid"]
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for(lambda: not alive(pid))
    member = json.loads(started.read_text())["run_dirs"][0]
    done_before = len(layout.read_metrics(member))
    assert done_before < epochs, "killed too late to test a resume"

    launch.resume_run(run_dir)
    wait_for(lambda: layout.read_status(run_dir)["state"] in ("done", "failed"), timeout=300)
    assert layout.read_status(run_dir)["state"] == "done", (run_dir / "train.log").read_text()
    log = (run_dir / "train.log").read_text()
    assert f"resuming {Path(member).name}" in log
    assert list(layout.read_metrics(member)["epoch"]) == list(range(1, epochs + 1))
    rows = compare_rows(run_dir)
    assert [r["model"] for r in rows] == ["svm", "cnn"] and rows[1]["run_dirs"] == member
    assert not (Path(member) / "last.pt").exists()
    table = (run_dir / "compare.md").read_text()
    # the resumed process trained only part of it: its wall time is not the comparison's
    assert "(the last, resumed process only)" in table
    training = float(table.split("training time (all models): ")[1].split(" s")[0])
    assert training >= sum(float(r["train_seconds"]) for r in rows) - 2


def compare_rows(run_dir):
    import csv

    with open(run_dir / "compare.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_checkpoints_are_written_together_after_the_first_epoch_then_at_most_every_interval_and_at_the_end(workspace):
    import torch

    from core.runs.recorder import RunRecorder

    run_dir = workspace / "runs" / "20260101-000000-classify-cnn-0000"
    with RunRecorder(run_dir, "classify") as run:
        run.checkpoint_every_s = 3600.0  # only the first and the final epoch pass the interval here

        def epoch(n, improved, final=False):
            run.save_epoch(lambda: {"epoch": n}, best={"epoch": n} if improved else None, final=final)
            best = run_dir / "best.pt"
            return (torch.load(run_dir / "last.pt", weights_only=True)["epoch"],
                    torch.load(best, weights_only=True)["epoch"] if best.exists() else None)

        assert epoch(1, improved=True) == (1, 1)
        assert epoch(2, improved=True) == (1, 1)  # held: best.pt and last.pt stay a pair from epoch 1
        assert epoch(3, improved=False) == (1, 1)
        assert epoch(4, improved=False, final=True) == (4, 2)  # the held best of epoch 2 lands with the last
        run.checkpoint_every_s = 0.0
        assert epoch(5, improved=False) == (5, 2)


def test_a_last_checkpoint_of_another_layout_restarts_the_run_instead_of_crashing(workspace):
    """A run interrupted under an older release (its last.pt holds the epoch inside meta) resumes from epoch 1
    with one line in the log, not a KeyError."""
    import torch

    from core.engine.trainer import EpochTask, Trainer
    from core.runs.recorder import RunRecorder

    class Counting(EpochTask):
        def __init__(self):
            self.trained = []

        def train_epoch(self, epoch):
            self.trained.append(epoch)
            return {"train_loss": 1.0 / epoch}

        def validate(self, epoch):
            return {"val_loss": 1.0 / epoch}

        def state(self):
            return {"state_dict": {}}

        def load_state(self, state):
            raise AssertionError("a foreign last.pt must not be loaded")

        def best_payload(self):
            return {"state_dict": {}}

    run_dir = workspace / "runs" / "20260101-000000-classify-cnn-0001"
    run_dir.mkdir(parents=True)
    torch.save({"state_dict": {}, "meta": {"epoch": 2}, "best_metric": 0.5, "best_epoch": 2}, run_dir / "last.pt")
    task = Counting()
    with RunRecorder(run_dir, "classify") as run:
        outcome = Trainer(run, task, epochs=3, metric="val_loss", higher_is_better=False).fit(resume=True)
    assert task.trained == [1, 2, 3] and outcome.epochs_run == 3 and outcome.best_epoch == 3
    assert "lacks" in (run_dir / "train.log").read_text()
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 3  # rewritten in the loop's own layout
