"""One run lifecycle for every task, driven the way a second shell would: `python -m core runs ...` subprocesses.

Each task starts a tiny run (`runs start`), is watched (`runs status --json`) from another process, cancelled
(`runs cancel`), resumed (`runs resume`) and finished; all four leave the same files and the same metrics.csv
columns first, and no epoch is recorded twice.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import layout
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
COMMON_FILES = {"config.yaml", "status.json", "metrics.csv", "train.log", "best.pt", "test_report.json"}

TASKS = {
    # enough epochs that a cancel lands mid-run whatever the load (the watch and the cancel are two `python -m core`
    # processes, ~2-5 s; 40 CNN epochs finished before the cancel at load 5, all 120 once checkpoints stopped being
    # written every epoch; all 120 landmark epochs when the machine turned quiet mid-suite), few enough that the
    # resume finishes in under a minute (32 px epochs here: CNN ~30 ms, landmark U-Net ~50 ms)
    "classify": {"task": "classify", "model": "cnn", "dataset": "ph", "input_size": 32, "epochs": 800,
                 "batch_size": 4, "patience": 0, "n_boot": 0, "device": "cpu", "augment": False},
    "landmarks": {"task": "landmarks", "model": "landmark-unet", "dataset": "ph", "input_size": 32, "epochs": 800,
                  "batch_size": 4, "widths": [4, 4, 8, 8, 8], "refine": 0, "mirror_average": False,
                  "device": "cpu"},
    "detect": {"task": "detect", "model": "yolov8n.yaml", "dataset": "ph", "epochs": 24, "imgsz": 64, "batch": 4,
               "device": "cpu", "workers": 0},
    # the slowest model first: the cancel lands while it trains
    "compare": {"task": "compare", "models": ["s_resnet34", "cnn", "svm"], "dataset": "ph", "epochs": 8,
                "input_size": 32, "batch_size": 4, "n_boot": 0},
}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """12 tiny phantom patients (CSXA layout: class, box, 23 landmarks), split by patient."""
    home = tmp_path_factory.mktemp("lifecycle") / "workspace"
    home.mkdir()
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for args in (["phantom", "--out", str(home / "src"), "--patients", "12", "--seed", "5", "--size", "128",
                  "--format", "csxa"],
                 ["import", "csxa", str(home / "src" / "csxa"), "--dataset", "ph"],
                 ["split", "--dataset", "ph", "--seed", "0"]):
        done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    return home


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT), "CERVICURVE_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def status_from_another_process(home: Path, run_id: str) -> dict:
    return json.loads(cli(home, "runs", "status", run_id, "--json").stdout)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_start_watch_cancel_resume_finish(home, tmp_path, monkeypatch, task):
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    config = tmp_path / f"{task}.yaml"
    config.write_text(json.dumps(TASKS[task]))  # JSON is YAML
    run_dir = Path(cli(home, "runs", "start", "--config", str(config)).stdout.strip().splitlines()[-1])
    run_id = run_dir.name

    # watched from another process until it has made progress (compare: while its first model trains)
    progressed = (lambda s: s["state"] == "running" and "training" in s.get("message", "")) if task == "compare" \
        else (lambda s: s["state"] == "running" and s.get("epoch", 0) >= 1)
    wait_for(lambda: progressed(layout.read_status(run_dir)) or layout.read_status(run_dir)["state"] in
         ("done", "failed"), timeout=240, every=0.1)
    seen = status_from_another_process(home, run_id)["status"]
    assert seen["state"] == "running", (run_dir / "train.log").read_text()[-3000:]
    assert seen["task"] == task and isinstance(seen["pid"], int) and time.time() - seen["heartbeat"] < 60

    assert "cancelled" in cli(home, "runs", "cancel", run_id).stdout
    assert status_from_another_process(home, run_id)["status"]["state"] == "cancelled"
    assert "cancelled" in (run_dir / "train.log").read_text()

    cli(home, "runs", "resume", run_id)
    wait_for(lambda: layout.read_status(run_dir)["state"] not in ("queued", "running"), timeout=300, every=0.3)
    final = status_from_another_process(home, run_id)
    assert final["status"]["state"] == "done", (run_dir / "train.log").read_text()[-3000:]

    files = {p.name for p in run_dir.iterdir()}
    assert COMMON_FILES <= files, COMMON_FILES - files
    if task != "compare":  # a comparison resumes from its finished models (entries/), not from a checkpoint
        assert "last.pt" in files
    with open(run_dir / "metrics.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames[:len(layout.COMMON_COLUMNS)]) == layout.COMMON_COLUMNS
    epochs = [int(r["epoch"]) for r in rows]
    expected = len(TASKS[task].get("models") or []) or TASKS[task]["epochs"]
    assert epochs == list(range(1, expected + 1))  # every epoch (or model) once, nothing lost in the cancel
    assert final["last_metrics"]["epoch"] == expected

    listed = cli(home, "runs", "list").stdout
    assert run_id in listed and task in listed


@pytest.mark.slow
def test_a_setup_error_ends_as_failed_with_its_reason(home, tmp_path, monkeypatch):
    """A run that cannot even start (an empty dataset) says failed, with the message, never stays queued."""
    monkeypatch.setenv("CERVICURVE_HOME", str(home))
    config = tmp_path / "empty.yaml"
    config.write_text(json.dumps({**TASKS["classify"], "dataset": "no-such-dataset"}))
    run_dir = Path(cli(home, "runs", "start", "--config", str(config)).stdout.strip().splitlines()[-1])
    wait_for(lambda: layout.read_status(run_dir)["state"] not in ("queued", "running"), timeout=120, every=0.1)
    status = layout.read_status(run_dir)
    assert status["state"] == "failed" and "no-such-dataset" in status["message"]
    log = (run_dir / "train.log").read_text()
    # a refused dataset is the user's to fix, not a bug: one line says why, in the log as in the status
    assert "run failed: dataset 'no-such-dataset'" in log and "Traceback" not in log
    refused = cli(home, "runs", "start", "--config", str(config), "epoch=3", check=False)
    assert refused.returncode == 2 and "unknown config key 'epoch'" in refused.stderr
    assert "Traceback" not in refused.stderr
    deleted = cli(home, "runs", "delete", run_dir.name)
    assert "deleted" in deleted.stdout and not run_dir.exists()
