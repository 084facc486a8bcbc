"""The run queue with real background runs: one run per device at a time, the next starts by itself (no page open),
waiting runs can be moved and cancelled, and the CLI shows and changes the queue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core import settings
from core.cli import main as cli_main
from core.runs import launch, layout, queue
from tests.helpers import ROOT
from tests.helpers.tiny import FAST_CONFIG as FAST
from tests.helpers.tiny import import_tiny
from tests.helpers.wait import wait_for


@pytest.fixture()
def tiny(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace)
    return workspace


def state(run_dir) -> str:
    return layout.read_status(run_dir)["state"]


@pytest.mark.slow
def test_a_second_run_waits_then_starts_by_itself_when_the_first_ends(tiny):
    first = launch.start_run(dict(FAST, epochs=2, input_size=32))
    second = launch.start_run(dict(FAST, epochs=1, input_size=32, seed=1))
    waiting = layout.read_status(second)
    assert queue.is_waiting(waiting) and waiting["state"] == "queued" and waiting["device"] == "cpu"
    assert [d for d, _ in queue.waiting()] == [second]
    assert queue.occupied()["cpu"] == 1

    # Nothing here calls advance(): the first run's supervisor starts the second when the first ends.
    wait_for(lambda: state(first) in ("done", "failed"))
    assert state(first) == "done", (first / "train.log").read_text()
    wait_for(lambda: state(second) in ("done", "failed"))
    assert state(second) == "done", (second / "train.log").read_text()
    started = layout.read_status_file(second)["started_at"]
    assert started >= layout.read_status_file(first)["updated_at"]  # it never ran beside the first
    assert queue.waiting() == []


@pytest.mark.slow
def test_waiting_runs_can_be_moved_and_cancelled_and_cancelling_frees_the_device(tiny, capsys):
    running = launch.start_run(dict(FAST, epochs=500, input_size=32))
    b = launch.start_run(dict(FAST, epochs=500, input_size=32, seed=1))
    c = launch.start_run(dict(FAST, epochs=500, input_size=32, seed=2))
    assert [d for d, _ in queue.waiting()] == [b, c]
    assert queue.move(c, 1) == [c.name, b.name]
    assert cli_main(["runs", "queue"]) == 0
    listing = capsys.readouterr().out
    assert listing.index(c.name) < listing.index(b.name) and "1 run(s) per device" in listing

    assert launch.cancel_run(b)["state"] == "cancelled"  # taken out of the queue, never started
    assert layout.read_status_file(b).get("pid") is None and [d for d, _ in queue.waiting()] == [c]
    assert cli_main(["runs", "move", b.name, "1"]) == 2
    assert "not waiting in the queue" in capsys.readouterr().err

    wait_for(lambda: state(running) == "running")
    launch.cancel_run(running)  # frees the device: the waiting run starts at once
    wait_for(lambda: layout.read_status_file(c).get("pid") is not None, timeout=30)
    assert state(c) in ("queued", "running")
    assert launch.cancel_run(c)["state"] == "cancelled"
    assert [state(d) for d in (running, b, c)] == ["cancelled"] * 3


def test_slots_per_device_are_a_setting(tiny, capsys):
    assert queue.slots() == 1
    assert cli_main(["runs", "queue", "--slots", "2"]) == 0
    assert queue.slots() == 2 and "2 run(s) per device" in capsys.readouterr().out
    with pytest.raises(layout.JobError, match="whole number >= 1"):
        queue.set_slots(0)


def test_a_new_run_appears_only_with_its_config_and_queued_status(workspace):
    """Readers (the Runs page, `runs`, a test waiting on a run) list a run folder only once its config and status
    are in it: a bare folder would read as failed and one without a queue entry as interrupted."""
    seen_while_staged = {}

    def prepare(staging, run_dir):
        (staging / layout.CONFIG_FILE).write_text("task: classify\n", encoding="utf-8")
        seen_while_staged["listed"] = [r.run_id for r in layout.list_runs()]
        seen_while_staged["exists"] = run_dir.exists()
        queue.enqueue(staging, ["train", "--run-dir", str(run_dir)], "cpu")
        seen_while_staged["waiting"] = queue.waiting()

    run_dir = layout.new_run_dir("s_resnet34", "classify", prepare)
    assert seen_while_staged == {"listed": [], "exists": False, "waiting": []}
    assert [r.run_id for r in layout.list_runs()] == [run_dir.name]
    assert layout.read_status(run_dir)["state"] == "queued"
    assert [d for d, _ in queue.waiting()] == [run_dir]
    assert layout.run_dirs() == [run_dir]


def test_a_run_whose_preparation_fails_leaves_no_folder(workspace):
    def prepare(staging, run_dir):
        (staging / layout.CONFIG_FILE).write_text("task: classify\n", encoding="utf-8")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        layout.new_run_dir("s_resnet34", "classify", prepare)
    assert list(settings.runs_dir().iterdir()) == []


def test_staging_left_by_a_killed_process_is_swept_by_the_next_run(workspace):
    """A process killed while it stages a run leaves a hidden folder (never listed as a run); the next new run
    removes those older than layout.STALE_S and leaves a young one, which may belong to a live process."""
    killed = textwrap.dedent("""
        import os, signal
        from core.runs import layout
        def prepare(staging, run_dir):
            (staging / layout.CONFIG_FILE).write_text("task: classify\\n", encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
        layout.new_run_dir("cnn", "classify", prepare)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(2):
        assert subprocess.run([sys.executable, "-c", killed], env=env).returncode == -signal.SIGKILL
    old, young = sorted(settings.runs_dir().glob(".*.staging"))
    long_ago = time.time() - layout.STALE_S - 60
    os.utime(old, (long_ago, long_ago))
    assert layout.list_runs() == []
    run_dir = layout.new_run_dir("cnn", "classify",
                                 lambda staging, _: (staging / layout.CONFIG_FILE).write_text("task: classify\n"))
    assert sorted(settings.runs_dir().iterdir()) == sorted([young, run_dir])
