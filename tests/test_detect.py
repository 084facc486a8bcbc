"""core.training.detect: real Ultralytics training on tiny data, offline, contained in the workspace."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT
from tests.helpers.films import spine_landmarks, write_box_dataset, write_landmark_dataset


def read_metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------------- network guard

# Runs before anything else in the child: every network attempt is recorded and refused.
NETWORK_GUARD = textwrap.dedent("""
    import json, os, socket
    _log = os.environ["NETWORK_ATTEMPTS_LOG"]
    def _refuse(kind, target):
        with open(_log, "a") as f:
            f.write(json.dumps([kind, repr(target)]) + "\\n")
        raise OSError(f"network disabled in this test: {kind} {target!r}")
    _connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse("connect", address)
        return _connect(self, address)
    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse("connect_ex", address)
        return _connect_ex(self, address)
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.getaddrinfo = lambda host, *a, **k: _refuse("getaddrinfo", host)
    socket.gethostbyname = lambda host: _refuse("gethostbyname", host)
    socket.create_connection = lambda address, *a, **k: _refuse("create_connection", address)
""")

CHILD = NETWORK_GUARD + textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(2)
    numpy_print = repr(np.get_printoptions())
    from core.training.detect import fit
    report = fit(json.loads(sys.argv[1]), sys.argv[2]).as_dict()
    print("RESULT " + json.dumps({"report": report, "threads": torch.get_num_threads(),
                                  "omp": os.environ.get("OMP_NUM_THREADS"),
                                  "numpy_print_kept": repr(np.get_printoptions()) == numpy_print,
                                  "ultralytics_imported": "ultralytics" in sys.modules}))
""")


@pytest.mark.slow
def test_detector_trains_offline_inside_the_workspace_and_finds_boxes(tmp_path):
    workspace, home, cwd, tmp = (tmp_path / name for name in ("workspace", "home", "cwd", "tmp"))
    for folder in (workspace, home, cwd, tmp):
        folder.mkdir()
    data_yaml = write_box_dataset(workspace / "exports" / "boxes", test=3)
    run_dir = workspace / "runs" / "detect-1"
    attempts = tmp_path / "network_attempts.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO", "ULTRALYTICS", "MPL", "OMP_"))}
    env.update(CERVICURVE_HOME=str(workspace), HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(tmp), PYTHONPATH=str(ROOT),
               NETWORK_ATTEMPTS_LOG=str(attempts), PYTHONDONTWRITEBYTECODE="1",
               # a subprocess (curl) would go through this dead proxy rather than out
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", ALL_PROXY="http://127.0.0.1:9")
    config = {"task": "detect", "data": str(data_yaml), "model": "yolov8n.yaml", "epochs": 2, "imgsz": 96,
              "batch": 4, "device": "cpu", "seed": 0}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config), str(run_dir)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])

    # offline: not one connection or DNS lookup, and the training still worked
    assert result["ultralytics_imported"]
    assert not attempts.exists() or attempts.read_text() == "", attempts.read_text()
    # contained: nothing in the cwd (no ./runs), the home folder or the temp folder
    assert list(cwd.iterdir()) == [] and list(home.rglob("*")) == [] and list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "home", "tmp", "workspace"]
    assert (workspace / "config" / "Ultralytics" / "Arial.ttf").is_file()
    ultra_settings = json.loads((workspace / "config" / "Ultralytics" / "settings.json").read_text())
    assert ultra_settings["sync"] is False and ultra_settings["runs_dir"].startswith(str(workspace))
    # threads, OMP and numpy's print options as the caller left them
    assert result["threads"] == 2 and result["omp"] is None and result["numpy_print_kept"]

    # the run folder, like a classification run's
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 2 and status["epochs"] == 2
    assert status["task"] == "detect" and status["pid"] > 0 and status["eta_s"] == 0
    assert status["best_metric"] is not None
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"mAP50", "mAP50_95", "train_box_loss", "precision", "recall"} <= set(rows[0])
    assert "epoch 2/2" in (run_dir / "train.log").read_text()
    report = json.loads((run_dir / "test_report.json").read_text())
    assert report == result["report"] and report["split"] == "test" and report["epochs_run"] == 2
    assert 0.0 <= report["mAP50"] <= 1.0 and 0.0 <= report["mAP50_95"] <= 1.0
    import torch

    checkpoint = torch.load(run_dir / "best.pt", weights_only=True)  # data, not pickled code
    assert checkpoint["meta"]["task"] == "detect" and checkpoint["meta"]["imgsz"] == 96
    assert (run_dir / "last.pt").is_file() and (run_dir / "ultralytics" / "weights" / "best.pt").is_file()

    # the detector answers in original pixels, for any image size
    from core.training.detect import RoiDetector

    torch.set_num_threads(2)
    omp_before = os.environ.get("OMP_NUM_THREADS")
    detector = RoiDetector(run_dir / "best.pt")
    rng = np.random.default_rng(5)
    image = (rng.random((120, 200)) * 0.3).astype(np.float32)
    image[30:90, 60:110] = 0.9
    found = detector.detect(image, min_confidence=0.0)
    assert found is not None
    box, confidence = found
    assert 0.0 <= confidence <= 1.0
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 120
    # the same picture at twice the size: the same detection at twice the coordinates
    big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    big_box, big_confidence = detector.detect(big, min_confidence=0.0)
    assert np.allclose(big_box, np.array(box) * 2, atol=6.0), (box, big_box)
    assert torch.get_num_threads() == 2 and os.environ.get("OMP_NUM_THREADS") == omp_before

    with pytest.raises(ValueError, match="grayscale"):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="not a landmarks model"):
        from core.training.detect import LandmarkModel
        LandmarkModel(run_dir / "best.pt")


@pytest.mark.slow
def test_landmark_model_trains_on_23_points_and_predicts_them(workspace, tmp_path, monkeypatch):
    import torch

    from core.training.detect import LandmarkModel, RoiDetector, train_landmark_model
    from core.training.landmarks import load as load_landmark_model
    from core.data.measure import landmark_flip_index

    monkeypatch.chdir(tmp_path)
    data_yaml = write_landmark_dataset(workspace / "exports" / "landmarks")
    torch.set_num_threads(2)
    omp_before = os.environ.get("OMP_NUM_THREADS")
    epochs_seen = []
    report = train_landmark_model(data_yaml, workspace / "runs" / "lm-1", epochs=1, imgsz=96, batch=4,
                                  device="cpu", progress_callback=lambda e, n, row: epochs_seen.append(
                                      (e, n, torch.get_num_threads())))
    assert torch.get_num_threads() == 2 and os.environ.get("OMP_NUM_THREADS") == omp_before
    # and it trained on both: Ultralytics alone would have set cpu_count - 1 threads (one core of two here)
    assert epochs_seen == [(1, 1, 2)]
    epochs_seen = [(e, n) for e, n, _ in epochs_seen]
    assert not (tmp_path / "runs").exists()
    assert epochs_seen == [(1, 1)]

    run_dir = workspace / "runs" / "lm-1"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    assert "pose_mAP50_95" in read_metrics(run_dir)[0]
    dataset = (run_dir / "dataset.yaml").read_text()
    assert "kpt_shape:\n- 23\n- 3" in dataset and "flip_idx" in dataset
    assert report.pose_mAP50_95 is not None and report.weights == run_dir / "best.pt"
    errors = report.landmark_errors
    assert errors["images"] == 3 and set(errors) == {"mean_error_px", "mean_error_pct_c2c7", "cobb_mae_deg",
                                                     "images", "missed"}
    assert json.loads((run_dir / "test_report.json").read_text())["landmark_errors"] == errors

    model = LandmarkModel(report.weights)
    image = np.asarray(Image.open(workspace / "exports/landmarks/images/val/val000.png"), np.float32) / 255
    predicted = model.predict(np.pad(image, ((0, 0), (0, 40))), min_confidence=0.0)  # another image size
    assert predicted is not None
    points, confidence = predicted
    assert points.shape == (23, 2) and confidence.shape == (23,)
    assert np.all(np.isfinite(points))
    assert torch.get_num_threads() == 2 and os.environ.get("OMP_NUM_THREADS") == omp_before
    with pytest.raises(ValueError, match="not a detect model"):
        RoiDetector(report.weights)
    # what Predict loads: the YOLO-pose checkpoint is recognised; trained on whole images, it needs no box
    loaded = load_landmark_model(report.weights)
    assert isinstance(loaded, LandmarkModel) and not loaded.needs_box
    assert loaded.locate(image, None, min_confidence=0.0)[0].shape == (23, 2)

    # flipping an image turns every "left" landmark into its "right" twin and back
    from core.data.measure import LANDMARK_NAMES

    flip = landmark_flip_index()
    assert sorted(flip) == list(range(23)) and [flip[i] for i in flip] == list(range(23))
    assert LANDMARK_NAMES[flip[LANDMARK_NAMES.index("C4 top left")]] == "C4 top right"
    assert LANDMARK_NAMES[flip[0]] == "C2 centroid"


class ShiftedTruth:
    """A landmark predictor whose answer is known: the truth moved by (3, 4) px, i.e. 5 px per point."""

    def __init__(self, truths):
        self.truths = truths

    def predict(self, image):
        truth = self.truths[int(image[0, 0])]
        return (None if truth is None else (truth + [3.0, 4.0], np.ones(23)))


def test_evaluate_landmarks_reports_pixel_percent_and_cobb_errors():
    from core.training.detect import evaluate_landmarks
    from core.data.measure import measure_landmarks

    rng = np.random.default_rng(3)
    truths = [spine_landmarks(rng, 200) for _ in range(3)]
    images = [np.full((4, 4), i, np.float32) for i in range(4)]
    model = ShiftedTruth(truths + [None])
    items = [(images[i], truths[i]) for i in range(3)] + [(images[3], truths[0])]
    result = evaluate_landmarks(model, items)
    assert result["images"] == 4 and result["missed"] == 1
    assert result["mean_error_px"] == pytest.approx(5.0)
    spans = [np.linalg.norm(t[0] - (t[21] + t[22]) / 2) for t in truths]
    assert result["mean_error_pct_c2c7"] == pytest.approx(np.mean([500 / s for s in spans]))
    assert result["cobb_mae_deg"] == pytest.approx(0.0, abs=1e-9)  # a shift does not bend the spine
    assert measure_landmarks(truths[0]).cobb_c2c7 != 0.0


def test_bad_inputs_fail_with_one_clear_error_and_download_nothing(workspace, tmp_path, monkeypatch):
    import torch

    from core.runs.configs import ConfigError
    from core.training.detect import RoiDetector, fit, train_detector, train_landmark_model

    monkeypatch.chdir(tmp_path)
    data_yaml = write_box_dataset(workspace / "exports" / "boxes", train=2, val=1, size=64)
    run = workspace / "runs"
    with pytest.raises(ConfigError, match="never downloads"):  # refused by the config, before a run folder
        train_detector(data_yaml, run / "a", model="yolov8n.pt", epochs=1, imgsz=64)
    assert not (run / "a").exists()
    with pytest.raises(ValueError, match="network yaml"):
        train_detector(data_yaml, run / "b", model="s_resnet34", epochs=1, imgsz=64)
    with pytest.raises(ValueError, match="pose network"):
        train_landmark_model(data_yaml, run / "c", model="yolov8n.yaml", epochs=1, imgsz=64)
    with pytest.raises(ConfigError, match="task detect or landmarks"):
        fit({"task": "classify"}, run / "d")
    with pytest.raises(ConfigError, match="'dataset'"):
        fit({"task": "detect"}, run / "e")
    with pytest.raises(ConfigError, match="unknown config key 'epoch'"):  # a typo is no longer ignored
        fit({"task": "detect", "data": str(data_yaml), "epoch": 5}, run / "e")

    # a dataset whose images are missing is an error, and its download script never runs
    marker = tmp_path / "download-ran"
    broken = workspace / "exports" / "broken.yaml"
    broken.write_text(f"path: {workspace / 'exports' / 'nowhere'}\ntrain: images/train\nval: images/val\n"
                      f"names: [cervical_spine]\ndownload: |\n  open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(FileNotFoundError, match="never runs a dataset's download script"):
        train_detector(broken, run / "f", epochs=1, imgsz=64)
    assert not marker.exists()
    wrong_kpts = workspace / "exports" / "boxes" / "wrong.yaml"
    wrong_kpts.write_text(data_yaml.read_text() + "kpt_shape: [17, 3]\n")
    with pytest.raises(ValueError, match=r"kpt_shape must be \[23, 3\]"):
        train_landmark_model(wrong_kpts, run / "g", epochs=1, imgsz=64)

    # a .pt that would run code when unpickled is refused, not executed
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, evil)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        train_detector(data_yaml, run / "h", model=evil, epochs=1, imgsz=64)
    with pytest.raises(ValueError, match="not a CerviCurve detect checkpoint"):
        RoiDetector(evil)
    assert not marker.exists()
    with pytest.raises(FileNotFoundError):
        RoiDetector(tmp_path / "missing.pt")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_detector_run_from_a_store_dataset_can_be_cancelled_and_resumed(workspace, tmp_path, monkeypatch):
    from core.data import importers
    from core.data.store import AnnotationStore
    from core.training.detect import fit

    monkeypatch.chdir(tmp_path)
    source = write_box_dataset(tmp_path / "boxes", train=6, val=2, size=64).parent
    with AnnotationStore() as store:
        importers.import_yolo(source, dataset="boxes", store=store)
    run_dir = workspace / "runs" / "detect-resume"
    config = {"task": "detect", "dataset": "boxes", "epochs": 2, "imgsz": 64, "batch": 4, "device": "cpu"}

    def cancel_after_first_epoch(epoch, epochs, row):
        raise KeyboardInterrupt  # what a user's Stop looks like inside the training loop

    with pytest.raises(KeyboardInterrupt):
        fit(config, run_dir, progress_callback=cancel_after_first_epoch)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "cancelled" and status["epoch"] == 1
    assert (run_dir / "dataset" / "data.yaml").is_file()  # exported from the store by core.data.exports
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["1"]

    report = fit(config, run_dir, resume=True).as_dict()
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "done" and status["epoch"] == 2
    assert [row["epoch"] for row in read_metrics(run_dir)] == ["1", "2"]
    assert report["epochs_run"] == 2 and Path(report["weights"]).is_file()
    assert not (tmp_path / "runs").exists()
