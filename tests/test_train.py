"""Classification runs: config validation, the run folder, checkpoints, resume after SIGKILL, repeatability,
evaluation, the SVM path and a tiny model comparison. Real files, real store, real subprocesses."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from core.training import checkpoints, classify
from core.runs import configs, layout, registry
from core.cli import main as cli_main
from core.training.crops import NORMALISATION, classifier_crop
from core.runs.layout import COMMON_COLUMNS
from core.settings import CLASSES
from tests.helpers import ROOT
from tests.helpers.tiny import FAST_OVERRIDES as FAST
from tests.helpers.tiny import import_tiny, metric_rows, subprocess_env
from tests.helpers.wait import wait_for


@pytest.fixture()
def tiny(workspace, monkeypatch):
    # one thread: the test machine is shared, and oversubscribed OpenMP threads slow training tenfold
    monkeypatch.setenv("CERVICURVE_THREADS", "1")
    import_tiny(workspace, missing_box=1)
    return workspace


# ---------------------------------------------------------------------------------------------- config
def test_yaml_defaults_are_the_dataclass_defaults():
    assert registry.load_config(configs.DEFAULT_CONFIG) == configs.ClassifyConfig()


@pytest.mark.parametrize("override, words", [
    ("epoch=3", ["unknown config key 'epoch'", "did you mean 'epochs'"]),
    ("epochs=ten", ["epochs", "whole number", "'ten'"]),
    ("epochs=0", ["epochs must be >= 1"]),
    ("class_weighting=oversample", ["class_weighting", "balanced, none, sampler"]),
    ("model=vgg16", ["model 'vgg16'", "s_resnet34", "svm"]),
    ("amp=maybe", ["amp must be auto, true or false"]),
    ("device=tpu", ["device 'tpu'", "auto, cpu, cuda"]),
    ("lr=-1", ["lr must be > 0"]),
    ("weights_path=/no/such/file.pt", ["weights_path", "not a file", "never downloaded"]),
    ("epochs", ["must look like key=value"]),
    ("augment.rotation=3", ["only model_options.<name>=value may use a dot"]),
])
def test_bad_config_values_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(configs.ConfigError) as caught:
        registry.load_config(configs.DEFAULT_CONFIG, [override])
    for word in words:
        assert word in str(caught.value)


def test_overrides_are_typed_by_the_dataclass(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model: resnet34\nepochs: 4\n")
    cfg = registry.load_config(config, ["epochs=5", "lr=1e-3", "augment=false", "input_size=null",
                                         "model=s_resnet34", "model_options.variant=channel", "amp=true"])
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.input_size) == (5, 0.001, False, None)
    assert cfg.model_options == {"variant": "channel"} and cfg.amp is True
    with pytest.raises(configs.ConfigError, match="does not exist"):
        registry.load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(configs.ConfigError, match="mapping"):
        registry.load_config(tmp_path / "list.yaml")


def test_every_task_has_a_strict_config():
    """Each task's config class fills its defaults and refuses unknown keys and wrong types, naming them."""
    data = registry.resolve_config({"task": "detect", "model": "yolov8n.yaml", "imgsz": 96, "dataset": "d"}, ["epochs=2"])
    assert data["task"] == "detect" and data["imgsz"] == 96 and data["epochs"] == 2 and data["patience"] == 50
    for config, words in (
            ({"task": "detect", "dataset": "d", "epoch": 5}, ["unknown config key 'epoch'", "did you mean 'epochs'"]),
            ({"task": "detect", "dataset": "d", "imgsz": "big"}, ["imgsz must be a whole number"]),
            ({"task": "landmarks", "dataset": "d", "patience": "x"}, ["patience must be a whole number"]),
            ({"task": "landmarks", "dataset": "d", "crop": "roi"}, ["unknown config key 'crop'"]),
            ({"task": "landmarks", "model": "yolov8n-pose.yaml", "dataset": "d", "crop": "middle"}, ["crop must be"]),
            ({"task": "compare", "models": ["cnn", "vgg"]}, ["unknown model(s) vgg"]),
            ({"task": "compare", "folds": 1}, ["folds needs at least 2"]),
            ({"task": "segment"}, ["task 'segment' is not one of"])):
        with pytest.raises(configs.ConfigError) as caught:
            registry.resolve_config(config)
        for word in words:
            assert word in str(caught.value), (config, str(caught.value))


@pytest.mark.parametrize("task", list(registry.TASKS))
def test_each_task_ships_a_config_showing_its_class_defaults(task):
    shipped = yaml.safe_load((ROOT / "configs" / f"{task}.yaml").read_text())
    parsed = registry.parse_config(shipped)
    assert parsed.task == task and parsed == registry.config_class(shipped)(**{
        k: v for k, v in shipped.items() if k in ("task", "model", "dataset")})


def test_bad_model_option_is_a_config_error(tiny):
    cfg = registry.load_config(None, FAST + ["model_options.depth=3", "epochs=1"])
    with pytest.raises(configs.ConfigError, match="depth"):
        classify.train(cfg)


# ---------------------------------------------------------------------------------------------- a run
@pytest.mark.slow
def test_a_run_writes_every_file_and_checkpoints_load_weights_only(tiny):
    cfg = registry.load_config(configs.DEFAULT_CONFIG, FAST + ["epochs=2"])
    run_dir = classify.train(cfg)

    for name in ("config.yaml", "metrics.csv", "status.json", "train.log", "last.pt", "best.pt", "test_report.json"):
        assert (run_dir / name).is_file(), name
    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == cfg.to_dict()
    rows = metric_rows(run_dir, drop=())
    assert list(rows[0]) == list(COMMON_COLUMNS) + list(classify.COLUMNS) and [r["epoch"] for r in rows] == ["1", "2"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 2 and status["epochs"] == 2
    assert status["pid"] == os.getpid() and status["task"] == "classify" and "updated_at" in status
    assert 0 <= status["best_metric"] <= 1

    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "last.pt", weights_only=True)
    meta = best["meta"]
    assert meta["model"] == "cnn" and meta["classes"] == list(CLASSES) and meta["input_size"] == 64
    assert meta["normalisation"] == NORMALISATION and meta["config"]["epochs"] == 2
    assert isinstance(meta["temperature"], float) and meta["temperature"] > 0
    assert "optimizer" not in best and {"optimizer", "scheduler"} <= set(last)
    log_text = (run_dir / "train.log").read_text()
    assert "no ROI box for" in log_text and "the whole image is used" in log_text  # patient P001 has no box

    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["split"] == "test" and report["n_images"] == 6
    macro_f1 = report["metrics"]["macro_f1"]
    assert macro_f1["low"] <= macro_f1["value"] <= macro_f1["high"]
    assert len(report["predictions"]) == 6

    model, meta = checkpoints.load_classifier(run_dir)
    crop = classifier_crop(np.full((80, 60), 0.5, np.float32), [10, 10, 50, 70], meta["input_size"],
                           meta["roi_margin"])
    probs = checkpoints.classify_crops(model, meta, crop[None])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics_and_another_seed_does_not(tiny):
    runs = [classify.train(registry.load_config(None, FAST + ["epochs=2", f"seed={seed}"])) for seed in (7, 7, 8)]
    first, again, other = (metric_rows(r) for r in runs)
    assert first == again
    assert first != other


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_completes_every_epoch_once(tiny):
    epochs = 5
    run_dir = tiny / "runs" / "killed"
    config = tiny / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "cnn", "dataset": "tiny", "input_size": 64, "batch_size": 4,
                                      "epochs": epochs, "n_boot": 50, "seed": 3}))
    env = subprocess_env(tiny)
    proc = subprocess.Popen([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir", str(run_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # epoch 1 checkpointed, epoch 2 under way (or the process is gone: the assertions below say so)
    wait_for(lambda: proc.poll() is not None or layout.read_status_file(run_dir).get("epoch", 0) >= 1,
             timeout=120, every=0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = len(metric_rows(run_dir))
    assert 1 <= done_before_kill < epochs, "the run must be killed while it still has epochs to go"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    assert layout.read_status(run_dir)["state"] == "interrupted"

    resumed = subprocess.run([sys.executable, "-m", "core", "train", "--resume", str(run_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    rows = metric_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert layout.read_status(run_dir)["state"] == "done"
    assert "resumed from last.pt after epoch" in (run_dir / "train.log").read_text()
    assert (run_dir / "test_report.json").exists()

    # the resumed run draws the same shuffles and augmentations as one that never stopped
    straight = classify.train(registry.load_config(config))
    assert metric_rows(straight) == rows


@pytest.mark.slow
def test_time_limit_stops_a_run_after_the_epoch_that_uses_it_up(tiny):
    run_dir = classify.train(registry.load_config(None, FAST + ["epochs=4", "time_limit_s=0.001"]))
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 1
    assert "time limit" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_evaluate_command_scores_another_split(tiny, capsys):
    run_dir = classify.train(registry.load_config(None, FAST + ["epochs=1"]))
    assert cli_main(["evaluate", str(run_dir), "--split", "val", "--n-boot", "20"]) == 0
    report = json.loads((run_dir / "val_report.json").read_text())
    assert report["split"] == "val" and report["n_images"] == 6
    assert json.loads(capsys.readouterr().out)["split"] == "val"
    assert cli_main(["evaluate", str(tiny / "runs" / "nope")]) == 2


def test_train_command_rejects_a_bad_config_before_training(tiny, capsys):
    assert cli_main(["train", "--config", str(configs.DEFAULT_CONFIG), "epochs=abc"]) == 2
    assert "epochs must be a whole number" in capsys.readouterr().err
    assert not (tiny / "runs").exists() or not any((tiny / "runs").iterdir())  # no run folder was made


@pytest.mark.slow
def test_svm_run_uses_the_same_folder_and_checkpoint_format(tiny):
    run_dir = classify.train(registry.load_config(None, ["model=svm", "input_size=64", "dataset=tiny", "n_boot=50"]))
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epochs"] == 1
    assert [r["epoch"] for r in metric_rows(run_dir)] == ["1"]
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["meta"]["kind"] == "sklearn"
    model, meta = checkpoints.load_classifier(run_dir / "best.pt")
    crops = np.random.default_rng(0).random((2, 64, 64), dtype=np.float32)
    probs = checkpoints.classify_crops(model, meta, crops)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(1), 1.0)
    assert json.loads((run_dir / "test_report.json").read_text())["n_images"] == 6


# ---------------------------------------------------------------------------------------------- compare
@pytest.mark.slow
def test_compare_on_a_tiny_set_writes_the_table(tiny):
    from core.runs.configs import ConfigError
    from core.training import compare

    out = compare.fit({"task": "compare", "models": ["cnn", "svm"], "dataset": "tiny", "epochs": 1, "input_size": 64,
                       "batch_size": 8, "n_boot": 50}, tiny / "cmp")
    table = (out / "compare.md").read_text()
    assert "| cnn |" in table and "| svm |" in table and "macro_f1" in table
    assert "- wall time: " in table and "resumed" not in table
    with open(out / "compare.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["cnn", "svm"]
    for row in rows:
        assert float(row["macro_f1_low"]) <= float(row["macro_f1"]) <= float(row["macro_f1_high"])
        assert int(row["n_test_images"]) == 6 and int(row["n_parameters"]) > 0
        assert float(row["inference_ms_per_image"]) > 0
    html = (out / "compare.html").read_text()
    assert '"error_y"' in html and '"arrayminus"' in html  # bars carry the bootstrap intervals
    assert '<script src="http' not in html  # plotly.js inlined: opens without a network
    with open(out / "metrics.csv", newline="") as handle:  # one row per model, in the run schema
        assert [(r["epoch"], r["model"]) for r in csv.DictReader(handle)] == [("1", "cnn"), ("2", "svm")]
    assert json.loads((out / "status.json").read_text())["state"] == "done"
    with pytest.raises(ConfigError, match="unknown model"):
        compare.fit({"task": "compare", "models": ["alexnet"], "dataset": "tiny"}, tiny / "cmp2")


def test_a_cancel_that_lands_in_a_finaliser_is_not_lost(monkeypatch):
    """Python ignores an exception raised in __del__ or a weakref callback (SQLAlchemy's, mid-demo); a SIGTERM
    handled there must still cancel the block, and print no "Exception ignored" traceback."""
    import weakref

    from core.runs.recorder import RunCancelled, cancel_on_sigterm

    def signalled(*_):
        signal.raise_signal(signal.SIGTERM)  # its Python handler runs before this returns: inside the finaliser

    class SignalledWhileCollected:
        __del__ = signalled

    class Collected:
        pass

    ignored = []  # what Python would print as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    before, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    # the finalised object is dropped at once; the weakref itself must live for its callback to run
    for collect in (lambda: SignalledWhileCollected() and None, lambda: weakref.ref(Collected(), signalled)):
        reached_the_end = False
        with pytest.raises(RunCancelled):
            with cancel_on_sigterm() as cancel:
                kept = collect()  # the object itself is collected at once
                assert cancel.requested
                reached_the_end = True
        del kept
        assert reached_the_end
        assert signal.getsignal(signal.SIGTERM) is before  # the previous handler is back
    assert ignored == [] and sys.unraisablehook is hook


def test_a_cancel_held_over_a_checkpoint_window_lands_after_it(tmp_path):
    """Ultralytics writes last.pt before our metrics row; a SIGTERM in that window must wait for the row, so a
    resume never starts after an epoch that has no row (CI once saw epochs 1, 2, 3, 5, 6)."""
    from core.runs import layout
    from core.runs.recorder import RunCancelled, RunRecorder

    with pytest.raises(RunCancelled), RunRecorder(tmp_path / "run", "detect", ["mAP50"]) as run:
        run.hold_cancel()
        signal.raise_signal(signal.SIGTERM)  # its Python handler runs before this returns, and raises nothing
        run.append_metrics({"epoch": 4, "mAP50": 0.5})
        run.release_cancel()  # the held cancel is raised here, and the recorder ends the run as cancelled
        raise AssertionError("release_cancel() did not raise the held cancel")
    assert layout.read_status(tmp_path / "run")["state"] == "cancelled"
    assert [r["epoch"] for r in run.metrics_rows()] == ["4"]
