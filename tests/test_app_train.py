"""Train page through AppTest with real background runs (tiny CNN, 32 px, a 30-image store dataset).

The lifecycle test drives the page the way a user does: start -> progress -> cancel -> resume -> done ->
continue as a new run -> promote both in turn (Runs page) -> Predict names the model -> roll back. The settings are
widgets of their config type (checkbox, number box with bounds, choice list, "default"-or-number box) with plain
labels, checked by the task's config class; a run's state reads the same in the chooser, the live view and the Runs
table, and a time estimate from earlier runs is shown before Start and before a run's first epoch ends.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import fields
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.errors import AppTestError

from core.runs import hardware, launch, layout, registry, reports
from core.runs.configs import ClassifyConfig, CompareConfig, HeatmapConfig, YoloConfig
from ui.run_views import setting_for
from tests.helpers import ROOT
from tests.helpers.pages import APP, RUNS, fill, page, start, texts, widget
from tests.helpers.tiny import import_tiny
from tests.helpers.wait import stand_in_process, stop, wait_for

FAST = {"model": "cnn", "dataset": "tiny", "input_size": 32, "batch_size": 4, "n_boot": 20, "warmup_epochs": 0,
        "patience": 0}


@pytest.fixture()
def tiny(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace)
    return workspace


def test_each_setting_is_the_widget_of_its_type_with_plain_words(tiny):
    at = page()
    kinds = {name: widget(at, name).type for name in ("epochs", "lr", "input_size", "augment", "device",
                                                      "class_weighting", "amp")}
    assert kinds == {"epochs": "number_input", "lr": "number_input", "input_size": "text_input",
                     "augment": "checkbox", "device": "selectbox", "class_weighting": "selectbox", "amp": "selectbox"}
    epochs, augment = widget(at, "epochs"), widget(at, "augment")
    assert (epochs.label, epochs.value, epochs.min, epochs.max) == ("Epochs", 30, 1, 10_000)
    assert "passes over the training films" in epochs.help and epochs.help.endswith("Default: 30.")
    assert (augment.label, augment.value) == ("Augment training films", True) and "Default: on." in augment.help
    assert widget(at, "input_size").value == "default" and "224 px for s_resnet34" in widget(at, "input_size").help
    assert widget(at, "device").options[:2] == ["auto (GPU if any, else CPU)", "CPU"]
    assert widget(at, "class_weighting").options == ["weigh the loss by class rarity", "draw rare classes more often",
                                                     "no correction"]
    # no label is a raw config key
    labels = [w.label for kind in ("number_input", "text_input", "checkbox", "selectbox") for w in at.get(kind)
              if w.key and w.key.startswith("train_ClassifyConfig_")]
    assert labels and not [label for label in labels if "_" in label or label.islower()]
    # a changed value names its default beside the field
    augment.uncheck().run()
    assert "default: on" in texts(at) and not at.error


@pytest.mark.parametrize("config_class,base", [
    (ClassifyConfig, {"task": "classify", "dataset": "tiny"}), (HeatmapConfig, {"task": "landmarks"}),
    (YoloConfig, {"task": "detect", "dataset": "tiny", "model": "yolov8n.yaml"}), (CompareConfig, {"task": "compare"})])
def test_every_widget_bound_is_a_value_the_config_accepts(config_class, base):
    # the number boxes stop at their bounds; the config class stays the judge, so each bound must pass it
    checked = []
    for name in (f.name for f in fields(config_class)):
        spec = setting_for(config_class, name)
        for bound in (spec.low, spec.high):
            if bound is not None:
                registry.resolve_config(base, [f"{name}={bound}"])
                checked.append(name)
    assert len(set(checked)) >= 4, checked


def test_each_field_is_checked_and_start_waits_for_a_valid_config(tiny):
    at = page()
    assert "**tiny**: 30 images of 30 patients" in texts(at)  # the dataset's size and class balance
    assert not at.button(key="train_start").disabled  # the defaults are valid
    widget(at, "input_size").set_value("ten").run()
    assert [e.value for e in at.error] == ["input_size must be a whole number, got 'ten'"]
    assert at.button(key="train_start").disabled
    with pytest.raises(AppTestError):  # a disabled Start cannot be pressed
        at.button(key="train_start").click().run()
    widget(at, "input_size").set_value("8").run()
    assert at.error[0].value.startswith("input_size must be between 16 and 2048 px")
    assert at.button(key="train_start").disabled
    widget(at, "input_size").set_value("default").run()
    assert not at.error and not at.button(key="train_start").disabled
    widget(at, "epochs").set_value(3).run()
    at.text_area(key="train_extra_ClassifyConfig").set_value("aug_rotaton_deg=5").run()
    assert "did you mean 'aug_rotation_deg'" in at.error[0].value and at.button(key="train_start").disabled
    at.text_area(key="train_extra_ClassifyConfig").set_value("aug_rotation_deg=5").run()
    assert not at.error and not at.button(key="train_start").disabled
    # this machine has no CUDA GPU: the panel names the CPU and its cores, and there is no estimate yet
    assert "No CUDA GPU: CPU" in texts(at) and f"{os.cpu_count()} cores" in texts(at)
    assert "no earlier classify s_resnet34 at 224 px on cpu run" in texts(at)
    assert "then a short final step: calibration on validation" in texts(at)  # announced before Start
    assert list(settings_runs(tiny)) == []  # nothing started


def settings_runs(home: Path):
    return (home / "runs").iterdir() if (home / "runs").exists() else iter(())


def test_the_gpu_panel_shows_nvml_readings(tiny, monkeypatch):
    # No GPU here: NVML's answer is faked; on a GPU machine hardware.gpus() reads it through nvidia-ml-py.
    fake = hardware.Gpu(0, "NVIDIA H200", 2048.0, 143771.0, 37.0, 41.0)
    monkeypatch.setattr(hardware, "gpus", lambda: [fake])
    at = page()
    shown = texts(at)
    assert "GPU 0: NVIDIA H200" in shown and "2.0 / 140.4 GiB" in shown and "37.0 %" in shown and "41.0 °C" in shown


def poll_page(at: AppTest, predicate, timeout: float = 180.0):
    """Rerun the page (what the live view's poll does) until ``predicate(at)`` holds."""
    def check():
        at.run()
        assert not at.exception
        return predicate(at)
    return wait_for(check, timeout=timeout, every=0.5)


@pytest.mark.slow
def test_lifecycle_start_cancel_resume_finish_continue_promote_predict_rollback(tiny):
    at = fill(page())
    run_dir = start(at)
    poll_page(at, lambda at: any("epoch" in p.proto.text and "left" in p.proto.text for p in at.get("progress"))
              and at.get("plotly_chart"))  # progress with the whole-run ETA, and the first curve point
    at.button(key=f"cancel_{run_dir.name}").click().run()
    assert layout.read_status(run_dir)["state"] == "cancelled"
    assert any("Cancelled" in w.value for w in at.warning)
    epochs_done = len(layout.read_metrics(run_dir))
    assert 1 <= epochs_done < 40

    at.button(key=f"resume_{run_dir.name}").click().run()
    # the page's own words first, then the file: the file can turn done between a poll's drawing and a check
    poll_page(at, lambda at: any("Done" in s.value for s in at.success), timeout=300)
    assert layout.read_status(run_dir)["state"] == "done"
    assert list(layout.read_metrics(run_dir)["epoch"]) == list(range(1, 41))  # every epoch once

    # continue for 3 more epochs as a new run from the last checkpoint
    at.number_input(key=f"more_{run_dir.name}").set_value(3).run()
    at.button(key=f"continue_{run_dir.name}").click().run()
    second = next(Path(r.run_dir) for r in layout.list_runs() if r.run_id != run_dir.name)
    assert layout.read_config(second)["init_from"] == str(run_dir) and layout.read_config(second)["epochs"] == 3
    poll_page(at, lambda at: layout.read_status(second)["state"] == "done", timeout=300)
    assert "started from the weights of" in (second / "train.log").read_text()

    runs = page(RUNS)
    for promoted in (run_dir, second):
        runs.multiselect(key="runs_selected").set_value([promoted.name]).run()
        if any(c.key == f"promote_anyway_{promoted.name}" for c in runs.checkbox):  # scores worse: confirm first
            runs.checkbox(key=f"promote_anyway_{promoted.name}").check().run()
        runs.button(key=f"promote_{promoted.name}").click().run()
        assert not runs.exception and not runs.error
        predict = page(APP)  # Predict (the default page) names the model it uses
        assert any(c.value.startswith(f"**Classifier:** cnn · run {promoted.name}") for c in predict.sidebar.caption)
    runs.run()
    runs.checkbox(key="rollback_sure_classify").check().run()
    runs.button(key="rollback_classify").click().run()
    assert not runs.error
    predict = page(APP)
    assert any(c.value.startswith(f"**Classifier:** cnn · run {run_dir.name}") for c in predict.sidebar.caption)


def chooser_words(at: AppTest, run_id: str) -> str:
    """The state words the run chooser shows beside ``run_id``."""
    chooser = at.selectbox(key="train_watch")
    [option] = [o for o in chooser.options if o.startswith(run_id)]
    return option.removeprefix(f"{run_id} — ")


def progress_text(at: AppTest) -> str:
    [bar] = at.get("progress")
    return bar.proto.text


@pytest.mark.slow
def test_one_state_everywhere_and_a_time_estimate_before_the_first_epoch(tiny):
    # an earlier finished run here gives the time estimate for the same model, size and device
    earlier = launch.start_run(dict(FAST, epochs=2))
    wait_for(lambda: layout.read_status(earlier)["state"] in ("done", "failed"), timeout=300)
    assert layout.read_status(earlier)["state"] == "done"

    at = fill(page(), epochs=500)
    assert "per epoch**, so about" in texts(at) and "Estimated from this workspace: median of 2 epochs" in texts(at)
    running = start(at)
    # the trainer writes an epoch's metrics row before its status: wait for the bar's first epoch, not the curve's
    poll_page(at, lambda at: chooser_words(at, running.name) == "running" and at.get("plotly_chart")
              and re.match(r"[1-9]\d* of \d+ epochs done", " ".join(p.proto.text for p in at.get("progress"))))
    # the chooser, the banner and the bar say the same, from the same status read
    banner = next(s.value for s in at.success if s.value.startswith("**Running**"))
    assert banner == "**Running** on cpu — training"  # no epoch number that could disagree with the bar
    done, total = map(int, re.match(r"(\d+) of (\d+) epochs done", progress_text(at)).groups())
    assert total == 500 and done >= 1 and "left (from its epochs so far" in progress_text(at)
    assert "After the last epoch comes a short final step (calibration on validation" in texts(at)

    # one run per device: the next one waits in the queue, its first epoch not begun: the estimate stands in
    waiting = launch.start_run(dict(FAST, epochs=7))
    at.run()
    assert chooser_words(at, waiting.name) == "waiting in the queue"
    at.selectbox(key="train_watch").set_value(waiting.name).run()
    assert any(i.value.startswith("**Waiting in the queue** for cpu since") for i in at.info)
    assert re.match(r"0 of 7 epochs done · about .+ in all, estimated before its first epoch from [12] earlier run",
                    progress_text(at)), progress_text(at)

    # the Runs table words them the same
    runs = page(RUNS)
    table = runs.dataframe[0].value.set_index("run")
    assert table.loc[running.name, "state"] == "running" and table.loc[waiting.name, "state"] == "waiting in the queue"
    assert table.loc[earlier.name, "state"] == "done" and table.loc[earlier.name, "val metric"] == "validation macro-F1"

    at.button(key=f"cancel_{waiting.name}").click().run()  # "Take out of the queue"
    at.selectbox(key="train_watch").set_value(running.name).run()
    at.button(key=f"cancel_{running.name}").click().run()
    assert [layout.read_status(r)["state"] for r in (waiting, running)] == ["cancelled", "cancelled"]
    assert chooser_words(at, running.name) == "cancelled"
    assert any(w.value == "**Cancelled** by user" for w in at.warning)  # not "Cancelled — cancelled by user"


@pytest.mark.slow
def test_a_run_started_by_one_app_process_is_seen_and_cancelled_by_a_new_one(tiny):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}]
        from tests.helpers.pages import fill, page, start
        print(start(fill(page(), epochs="500")))
    """)
    env = dict(os.environ, CERVICURVE_HOME=str(tiny), PYTHONPATH=str(ROOT))
    first_server = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first_server.returncode == 0, first_server.stderr[-3000:]
    run_dir = Path(first_server.stdout.strip().splitlines()[-1])
    # the first app process is gone; a new one finds the run from its folder alone
    at = page()
    assert at.selectbox(key="train_watch").value == run_dir.name
    poll_page(at, lambda at: any("Running" in s.value for s in at.success))
    assert layout.read_status(run_dir)["state"] == "running"
    at.button(key=f"cancel_{run_dir.name}").click().run()
    assert layout.read_status(run_dir)["state"] == "cancelled"


def test_a_dead_run_shows_as_interrupted_never_as_running(tiny):
    run_dir = layout.new_run_dir("cnn")
    (run_dir / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\ndataset: tiny\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    layout.write_status(run_dir, {"state": "running", "pid": dead.pid, "epoch": 2, "epochs": 10, "task": "classify"})
    at = page()
    assert any(e.value.startswith("**Interrupted** — the training process is gone") for e in at.error)
    assert at.selectbox(key="train_watch").options == [f"{run_dir.name} — interrupted"]
    assert not any("Running" in s.value for s in at.success)
    assert at.button(key=f"resume_{run_dir.name}")  # offered instead of Cancel


def curve_epochs(at: AppTest) -> set[tuple]:
    """The epochs each line of the page's curves has points at (plotly sends them as typed arrays)."""
    import base64

    import numpy as np

    def values(x) -> tuple:
        if isinstance(x, dict):  # {"dtype": "i1", "bdata": base64}
            x = np.frombuffer(base64.b64decode(x["bdata"]), dtype=np.dtype(x["dtype"]))
        return tuple(int(v) for v in x)

    return {values(trace["x"]) for chart in at.get("plotly_chart")
            for trace in json.loads(chart.proto.spec)["data"]}


def test_the_curves_never_run_ahead_of_the_bar(tiny):
    # A trainer appends an epoch's metrics row, then writes its status: a poll between the two writes reads a
    # row the status does not count yet. The page shows what the status counts, everywhere.
    stand_in = stand_in_process("core-between-writes")
    try:
        run_dir = layout.new_run_dir("cnn")
        (run_dir / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\ndataset: tiny\nepochs: 6\n")
        (run_dir / layout.METRICS_FILE).write_text(
            "epoch,split,train_loss,val_loss,lr,seconds,val_macro_f1\n1,val,1.0,1.1,0.001,2.0,0.3\n"
            "2,val,0.9,1.0,0.001,2.0,0.4\n")
        status = {"state": "running", "pid": stand_in.pid, "epoch": 1, "epochs": 6, "task": "classify",
                  "device": "cpu", "heartbeat": time.time(), "message": "epoch 1/6"}
        layout.write_status(run_dir, status)
        at = page()
        assert progress_text(at).startswith("1 of 6 epochs done")
        assert curve_epochs(at) == {(1,)}
        layout.write_status(run_dir, dict(status, epoch=2, message="epoch 2/6"))
        at.run()
        assert progress_text(at).startswith("2 of 6 epochs done")
        assert curve_epochs(at) == {(1, 2)}
    finally:
        stop(stand_in)


def test_the_final_step_after_the_last_epoch_is_announced(tiny):
    # A process standing in for a trainer in its final step (what classify's _finish_run writes): the page shows
    # the step, the bar its epochs, and the chooser the same state.
    stand_in = stand_in_process("core-final-step")
    try:
        run_dir = layout.new_run_dir("cnn")
        (run_dir / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\ndataset: tiny\nepochs: 6\n")
        layout.write_status(run_dir, {"state": "running", "pid": stand_in.pid, "epoch": 4, "epochs": 6,
                                      "task": "classify", "device": "cpu", "eta_s": None, "heartbeat": time.time(),
                                      "message": "calibrating on validation"})
        at = page()
        assert chooser_words(at, run_dir.name) == "running"
        assert any(s.value == "**Running** on cpu — final step: calibrating on validation" for s in at.success)
        assert progress_text(at) == "4 of 6 epochs done (stopped early) · final step"
    finally:
        stop(stand_in)


@pytest.mark.parametrize("status,label,headline,progress", [
    ({"state": "running", "epoch": 4, "epochs": 6, "message": "epoch 5/6", "device": "cpu"},
     "running", "Running on cpu — training", "4 of 6 epochs done"),
    ({"state": "running", "epoch": 6, "epochs": 6, "message": "evaluating on the test split", "device": "cuda:0"},
     "running", "Running on cuda:0 — final step: evaluating on the test split", "6 of 6 epochs done"),
    ({"state": "queued", "queued_at": "2026-12-07T10:00:00+00:00", "pid": None, "device": "cpu", "epochs": 6,
      "message": "waiting"}, "waiting in the queue", "Waiting in the queue for cpu", "0 of 6 epochs done"),
    ({"state": "queued", "pid": 12, "message": "starting", "epochs": 6}, "starting", "Starting", "0 of 6 epochs done"),
    ({"state": "done", "epoch": 6, "epochs": 6, "message": "done"}, "done", "Done", "6 of 6 epochs done"),
    ({"state": "done", "epoch": 6, "epochs": 6, "message": "done; test macro-F1 0.812"}, "done",
     "Done — test macro-F1 0.812", "6 of 6 epochs done"),
    ({"state": "cancelled", "epoch": 2, "epochs": 6, "message": "cancelled by user"}, "cancelled", "Cancelled by user",
     "2 of 6 epochs done"),
    ({"state": "done", "task": "compare", "epoch": 7, "epochs": 7, "message": "done: 7 models; best cnn"}, "done",
     "Done — 7 models; best cnn", "7 of 7 models done"),
    ({"state": "interrupted", "epoch": 2, "epochs": 10,
      "message": "the training process is gone (killed or machine restarted); resume to continue"}, "interrupted",
     "Interrupted — the training process is gone (killed or machine restarted)", "2 of 10 epochs done"),
])
def test_run_state_words_never_repeat_a_word_or_disagree_with_the_bar(status, label, headline, progress):
    state = reports.run_state(status)
    assert (state.label, state.headline, state.progress) == (label, headline, progress)


def test_the_final_steps_the_pages_announce_are_the_ones_the_trainers_write():
    # reports.FINAL_STEPS recognises these status messages; a trainer that rewords one would go unannounced
    sources = "".join(path.read_text() for path in (ROOT / "core" / "training").rglob("*.py"))  # packages too
    for message in reports.FINAL_STEPS:
        assert f'message="{message}"' in sources, message
