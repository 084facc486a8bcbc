"""The same train command under torchrun: two CPU processes (gloo), one run folder written by rank 0."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT
from tests.helpers.tiny import import_tiny, metric_rows, subprocess_env


@pytest.mark.slow
def test_two_process_gloo_run_finishes_one_run_folder(workspace):
    import_tiny(workspace)
    run_dir = workspace / "runs" / "ddp"
    config = workspace / "ddp.yaml"
    config.write_text("model: cnn\ndataset: tiny\ninput_size: 64\nbatch_size: 4\nepochs: 1\nn_boot: 20\n")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "core", "train", "--config", str(config), "--run-dir", str(run_dir)],
        cwd=ROOT, env=subprocess_env(workspace), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr

    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 1
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1"]  # one writer: rank 0
    log_text = (run_dir / "train.log").read_text()
    assert "x2 (DDP)" in log_text and log_text.count("epoch 1/1  train_loss") == 1
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in best["state_dict"])  # saved unwrapped, loads anywhere
    assert json.loads((run_dir / "test_report.json").read_text())["n_images"] == 6
