"""``python -m core demo``: from an empty workspace to promoted models and a working ``predict``.

``--tiny`` runs every step of the real demo (phantoms -> CSXA import -> splits -> detector, landmark and
S-ResNet-34 runs -> promotion -> held-out check) at minimal sizes, so the whole path runs in the suite.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.demo import PROFILES, STEPS
from core.runs.configs import DEMO_QUALITIES
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_demo_builds_a_workspace_that_predicts(workspace):
    env = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", "demo", "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # progress lines name every step in order, with the step count
    steps_seen = [int(m.group(1)) for m in re.finditer(r"^\[(\d)/6\] ", done.stdout, re.MULTILINE)]
    assert sorted(set(steps_seen)) == list(range(1, len(STEPS) + 1)) and steps_seen == sorted(steps_seen)
    # the detector trains in its own process beside the landmark model, and both report in step 3
    both = r"^\[3/6\] training detector and landmark model: "
    assert re.search(both + r"landmarks epoch 1/1, val error [\d.]+ px.*; detector (epoch \d/1|done)", done.stdout,
                     re.MULTILINE)
    assert re.search(both + r"detector: done: .*mAP50-95", done.stdout, re.MULTILINE)
    assert re.search(r"^\[4/6\] training classifier: ", done.stdout, re.MULTILINE)

    # the build is a run like the models it trains: one status file, listed with the other runs
    builds = sorted((workspace / "runs").glob("*-demo-tiny-*"))
    assert len(builds) == 1
    status = json.loads((builds[0] / "status.json").read_text())
    assert status["state"] == "done" and status["task"] == "demo" and status["step"] == status["steps"] == 6
    assert status["epoch"] == status["epochs"] == 6  # the Runs page's "6 of 6 steps done"

    # three real run folders, promoted, each marked as a demo model of this quality
    for task in ("detect", "landmarks", "classify"):
        record = json.loads((workspace / "promoted" / task / "promoted.json").read_text())
        assert record["task"] == task and record["demo_quality"] == "tiny" and record["dataset"] == "phantom-demo"
        run = workspace / "runs" / record["run_id"]
        assert json.loads((run / "status.json").read_text())["state"] == "done"
        assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()

    # the landmark model is the heatmap one: the angle needs its precision
    landmark_record = json.loads((workspace / "promoted/landmarks/promoted.json").read_text())
    assert landmark_record["model"] == "landmark-unet" and "cobb_mae_deg" in landmark_record["demo_check"]
    # the sidebar judges each model by its own held-out number
    from ui.frame import model_line

    # one number per model, named, and said to be measured on synthetic phantoms
    for task, score in (("classify", "class score"), ("detect", "box score"), ("landmarks", "landmark")):
        line = model_line(json.loads((workspace / f"promoted/{task}/promoted.json").read_text()))
        assert "held-out phantoms" in line and "synthetic" in line, line
        assert score in line or "no held-out test score" in line, line

    report = json.loads((workspace / "demo_report.json").read_text())
    assert report == json.loads((builds[0] / "demo_report.json").read_text()) and report["build_run"] == builds[0].name
    assert report["images"] == 3 and 0.0 <= report["class_accuracy"] <= 1.0
    assert {"mean_landmark_error_px", "mean_landmark_error_pct_c2c7", "cobb_within_5deg"} <= set(report)
    assert json.loads((workspace / "promoted/classify/promoted.json").read_text())["demo_check"]["images"] == 3
    holdout = sorted((workspace / "demo" / "holdout").glob("*.png"))
    assert len(holdout) == 3

    # the imported dataset lives in the workspace's own store, split by patient
    from core.data.store import AnnotationStore

    store = AnnotationStore(f"sqlite:///{workspace / 'cervicurve.db'}")
    try:
        items = store.current_labels("phantom-demo")
    finally:
        store.close()
    assert len(items) == 12 and {i.split for i in items} == {"train", "val", "test"}
    patients = {}
    for item in items:
        patients.setdefault(item.patient_id, set()).add(item.split)
    assert all(len(splits) == 1 for splits in patients.values())

    # nothing written outside the workspace's folders
    assert not (ROOT / "runs").exists() or not any((ROOT / "runs").iterdir())

    # the promoted models answer `predict` on a held-out phantom
    predicted = subprocess.run([sys.executable, "-m", "core", "predict", str(holdout[0]), "--json"], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    record = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert record["file"] == str(holdout[0]) and record["class"] in ("normal", "straightened", "reversed")


@pytest.mark.slow
def test_sigterm_cancels_the_demo_and_says_so(workspace):
    """The app's cancel button sends SIGTERM: the demo stops, its status reads 'cancelled', nothing is promoted."""
    import signal

    env = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    demo = subprocess.Popen([sys.executable, "-m", "core", "demo", "--tiny"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def training() -> Path | None:  # the demo run's status file once it trains (step 3 or later)
        try:
            status_file = next((workspace / "runs").glob("*-demo-tiny-*")) / "status.json"
            return status_file if json.loads(status_file.read_text())["step"] >= 3 else None
        except (StopIteration, OSError, ValueError, KeyError):
            return None

    status_file = wait_for(training, timeout=120, every=0.1)
    demo.send_signal(signal.SIGTERM)
    _, stderr = demo.communicate(timeout=120)
    assert demo.returncode == 130 and "demo cancelled" in stderr
    assert "Traceback" not in stderr
    assert json.loads(status_file.read_text())["state"] == "cancelled"
    assert not (workspace / "promoted" / "classify").exists()
    # the detector's own process went with it: no run is left running, none says so
    import psutil

    for run_status in (workspace / "runs").glob("*/status.json"):
        recorded = json.loads(run_status.read_text())
        assert recorded["state"] in ("cancelled", "queued"), recorded
        pid = recorded.get("pid")
        assert not pid or not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_every_demo_quality_a_config_accepts_has_a_profile():
    assert tuple(PROFILES) == DEMO_QUALITIES


def test_a_cancel_during_the_detector_process_start_waits_for_the_start_then_stops_it(workspace, monkeypatch):
    """A cancel (SIGTERM) that lands while the demo spawns its detector process used to cut the child's start-up
    data short: the child died printing a traceback ("Ran out of input"). The signal now waits until the child has
    started, then the demo stops it and the cancel goes on."""
    import multiprocessing.process
    import signal

    from core import demo

    class Cancelled(Exception):
        pass

    def on_term(signum, frame):
        raise Cancelled()

    previous = signal.signal(signal.SIGTERM, on_term)
    start = multiprocessing.process.BaseProcess.start
    started = []

    def start_with_a_cancel(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the cancel arrives as the start begins
        start(self)
        started.append(self)

    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_with_a_cancel)

    class Reporter:
        background = None

    try:
        with pytest.raises(Cancelled):
            with demo._BackgroundDetector(demo.PROFILES["tiny"], Reporter(), seed=0):
                pytest.fail("the cancel must stop the demo before the detector's with-block runs")
    finally:
        signal.signal(signal.SIGTERM, previous)
    (child,) = started  # the start ran whole before the cancel was let through
    assert not child.is_alive() and child.exitcode is not None
    assert Reporter.background is None
