"""Train page through AppTest with real background runs (tiny CNN, 32 px, a 30-image store dataset).

The lifecycle test drives the page the way a user does: start -> progress -> cancel -> resume -> done ->
continue as a new run -> promote both in turn (Runs page) -> Predict names the model -> roll back.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runs import hardware, layout
from test_jobs import wait_for
from test_train import import_tiny

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "pages" / "train.py")
RUNS = str(ROOT / "pages" / "runs.py")
APP = str(ROOT / "app.py")
TINY = {"epochs": "40", "batch_size": "4", "input_size": "32", "warmup_epochs": "0", "patience": "0"}


@pytest.fixture()
def tiny(workspace, monkeypatch):
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace)
    return workspace


def page(path: str = TRAIN) -> AppTest:
    at = AppTest.from_file(path, default_timeout=60).run()
    assert not at.exception, at.exception
    return at


def fill(at: AppTest, model: str = "cnn", **values: str) -> AppTest:
    at.selectbox(key="train_model").set_value(model).run()
    for name, value in {**TINY, **values}.items():
        at.text_input(key=f"train_ClassifyConfig_{name}").set_value(value).run()
    at.text_area(key="train_extra_ClassifyConfig").set_value("n_boot=20").run()
    assert not at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "info", "success", "warning") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


def test_each_field_is_checked_and_start_waits_for_a_valid_config(tiny):
    at = page()
    assert "**tiny**: 30 images of 30 patients" in texts(at)  # the dataset's size and class balance
    assert not at.button(key="train_start").disabled  # the defaults are valid
    at.text_input(key="train_ClassifyConfig_epochs").set_value("ten").run()
    assert [e.value for e in at.error] == ["epochs must be a whole number, got 'ten'"]
    assert at.button(key="train_start").disabled
    at.text_input(key="train_ClassifyConfig_epochs").set_value("3").run()
    at.text_area(key="train_extra_ClassifyConfig").set_value("aug_rotaton_deg=5").run()
    assert "did you mean 'aug_rotation_deg'" in at.error[0].value and at.button(key="train_start").disabled
    at.text_area(key="train_extra_ClassifyConfig").set_value("aug_rotation_deg=5").run()
    assert not at.error and not at.button(key="train_start").disabled
    # this machine has no CUDA GPU: the panel names the CPU and its cores, and there is no estimate yet
    assert "No CUDA GPU: CPU" in texts(at) and f"{os.cpu_count()} cores" in texts(at)
    assert "no earlier classify s_resnet34 at 224 px on cpu run" in texts(at)
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


def start(at: AppTest) -> Path:
    at.button(key="train_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [run] = layout.list_runs()[:1]
    return Path(run.run_dir)


def poll_page(at: AppTest, predicate, timeout: float = 180.0):
    """Rerun the page (what the live view's poll does) until ``predicate(at)`` holds."""
    def check():
        at.run()
        assert not at.exception
        return predicate(at)
    return wait_for(check, timeout=timeout, every=0.5)


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
    poll_page(at, lambda at: layout.read_status(run_dir)["state"] == "done", timeout=300)
    assert list(layout.read_metrics(run_dir)["epoch"]) == list(range(1, 41))  # every epoch once
    assert any("Done" in s.value for s in at.success)

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
        runs.button(key=f"promote_{promoted.name}").click().run()
        assert not runs.exception and not runs.error
        predict = page(APP)  # Predict (the default page) names the model it uses
        assert any(c.value.startswith(f"**Classifier:** cnn · run {promoted.name}") for c in predict.sidebar.caption)
    runs.run()
    runs.button(key="rollback_classify").click().run()
    assert not runs.error
    predict = page(APP)
    assert any(c.value.startswith(f"**Classifier:** cnn · run {run_dir.name}") for c in predict.sidebar.caption)


def test_a_run_started_by_one_app_process_is_seen_and_cancelled_by_a_new_one(tiny):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests')!r}]
        from streamlit.testing.v1 import AppTest
        from test_app_train import fill, page, start
        print(start(fill(page(), epochs="500")))
    """)
    env = dict(os.environ, CERVICURVE_HOME=str(tiny), PYTHONPATH=str(ROOT))
    first_server = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert first_server.returncode == 0, first_server.stderr[-3000:]
    run_dir = Path(first_server.stdout.strip().splitlines()[-1])
    # the first app process is gone; a new one finds the run from its folder alone
    at = page()
    assert at.selectbox(key="train_watch").value == run_dir.name
    poll_page(at, lambda at: layout.read_status(run_dir)["state"] == "running")
    assert any("Running" in s.value for s in at.success)
    at.button(key=f"cancel_{run_dir.name}").click().run()
    assert layout.read_status(run_dir)["state"] == "cancelled"


def test_a_dead_run_shows_as_dead_never_as_running(tiny):
    run_dir = layout.new_run_dir("cnn")
    (run_dir / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\ndataset: tiny\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    layout.write_status(run_dir, {"state": "running", "pid": dead.pid, "epoch": 2, "epochs": 10, "task": "classify"})
    at = page()
    assert any(e.value.startswith("**Dead**") for e in at.error)
    assert not any("Running" in s.value for s in at.success)
    assert at.button(key=f"resume_{run_dir.name}")  # offered instead of Cancel
