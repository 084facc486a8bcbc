"""core.training.landmarks: the heatmap landmark model — augmentation geometry, real training runs on tiny phantoms, resume,
loading, and clear errors. How precise it gets at the demo's size is measured by the demo's held-out check
(README), not here: these models train for seconds at 64 px."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hypothesis import given, settings, strategies as st

from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_home(tmp_path_factory):
    """A workspace with 12 tiny phantom patients imported (CSXA layout: box + 23 landmarks) and split."""
    home = tmp_path_factory.mktemp("landmarks") / "workspace"
    home.mkdir()
    previous = os.environ.get("CERVICURVE_HOME")
    os.environ["CERVICURVE_HOME"] = str(home)
    try:
        from core.data import datasets, importers, phantom

        phantom.write_phantoms(home / "src", 12, 1, seed=3, size=128, formats=("csxa",))
        importers.import_csxa(home / "src" / "csxa", dataset="ph", annotator="test")
        datasets.make_splits("ph", (0.5, 0.25, 0.25), seed=0)
        yield home
    finally:
        if previous is None:
            os.environ.pop("CERVICURVE_HOME", None)
        else:
            os.environ["CERVICURVE_HOME"] = previous


@pytest.fixture()
def home(phantom_home, monkeypatch):
    monkeypatch.setenv("CERVICURVE_HOME", str(phantom_home))
    return phantom_home


def tiny_config(**extra) -> dict:
    return {"task": "landmarks", "model": "landmark-unet", "dataset": "ph", "epochs": 2, "input_size": 64,
            "batch_size": 4, "widths": [8, 8, 16, 16, 16], "device": "cpu", **extra}


# ------------------------------------------------------------------------------------------ augmentation geometry

def dot_contexts(points: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Context crops with one bright Gaussian dot at each image's first point ([-1, 1] coordinates)."""
    centres = (torch.arange(size) + 0.5) / size * 2 - 1
    gx = torch.exp(-((centres - points[:, 0, 0:1]) ** 2) / (2 * 0.02 ** 2))
    gy = torch.exp(-((centres - points[:, 0, 1:2]) ** 2) / (2 * 0.02 ** 2))
    return (gy[:, :, None] * gx[:, None, :])[:, None]


def test_augmented_labels_follow_the_augmented_image():
    """Rotation, per-axis scale, shift and flip move the point exactly where the image content went."""
    from core.training.landmarks import HeatmapConfig, augmented_batch

    cfg = HeatmapConfig.from_dict({"dataset": "x", "input_size": 64, "rotate_deg": 15, "scale": 0.2, "shift": 0.1})
    generator = torch.Generator().manual_seed(0)
    n = 32
    centre = torch.empty(n, 1, 2).uniform_(-0.4, 0.4, generator=generator)
    points = centre.expand(n, 23, 2).clone()  # every landmark on the dot: flips keep it there
    inputs, target, flipped = augmented_batch(dot_contexts(points), points, cfg, generator, photometric=False)
    assert inputs.shape == (n, 1, 64, 64) and target.shape == (n, 23, 2)
    assert 0 < int(flipped.sum()) < n  # both cases are exercised
    size = inputs.shape[-1]
    flat = inputs[:, 0].flatten(1).argmax(1)
    found = torch.stack([(flat % size + 0.5) / size * 2 - 1, (flat // size + 0.5) / size * 2 - 1], 1)
    # within one input pixel (2/64 in these coordinates) of where the labels say the dot is
    assert torch.allclose(found, target[:, 0], atol=2.0 / size)


def test_a_mirrored_spine_keeps_its_angle_and_faces_the_other_way(workspace):
    from core.training.landmarks import HeatmapConfig, augmented_batch
    from core.data.measure import measure_landmarks
    from core.data.phantom import generate_case

    cfg = HeatmapConfig.from_dict({"dataset": "x", "input_size": 64, "rotate_deg": 0, "scale": 0.0, "shift": 0.1})
    case = generate_case(11, size=128, curvature_class="normal", patient_id="P")
    unit = torch.tensor(case.landmarks / 64.0 - 1.0, dtype=torch.float32)[None].expand(16, 23, 2).clone()
    contexts = torch.zeros(16, 1, 32, 32)
    _, target, flipped = augmented_batch(contexts, unit, cfg, torch.Generator().manual_seed(1), photometric=False)
    original = measure_landmarks(case.landmarks)
    for points, was_flipped in zip(target.double().numpy(), flipped.tolist()):
        measured = measure_landmarks(points * 64.0)  # any common scale: angles do not depend on it
        assert measured.cobb_c2c7 == pytest.approx(original.cobb_c2c7, abs=1e-3)
        assert (measured.facing != original.facing) == was_flipped


# ------------------------------------------------------------------------------------------ training runs

@pytest.mark.slow
def test_cli_trains_a_run_folder_that_the_pipeline_can_load(home, tmp_path):
    from core.runs import layout, promotion
    from core.training.landmarks import FORMAT, HeatmapLandmarkModel
    from core.training.landmarks import load as load_landmark_model
    from core.data.phantom import generate_case

    config = tmp_path / "landmarks.yaml"
    config.write_text(yaml.safe_dump(tiny_config()))
    run_dir = home / "runs" / "20250101-000000-landmarks-landmark-unet-0001"  # promote takes a run under runs/ only
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(config), "--run-dir", str(run_dir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"config.yaml", "status.json", "metrics.csv", "train.log", "best.pt", "last.pt",
            "test_report.json"} <= {p.name for p in run_dir.iterdir()}
    status = layout.read_status(run_dir)
    assert status["state"] == "done" and status["task"] == "landmarks" and status["epoch"] == 2
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["val_mean_error_px"]) > 0 for r in rows)
    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["images"] == 3 and report["split"] == "test" and report["mean_error_px"] > 0
    # `evaluate` scores the run on another split of its dataset, as for a classifier
    scored = subprocess.run([sys.executable, "-m", "core", "evaluate", str(run_dir), "--split", "val"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-2000:]
    val = json.loads(scored.stdout)
    assert val["split"] == "val" and val["images"] == 3 and val["cobb_mae_deg"] is not None
    assert json.loads((run_dir / "val_report.json").read_text()) == val
    # `analyse`: per-landmark errors and the model-vs-truth Bland-Altman limits the Runs page plots
    analysed = subprocess.run([sys.executable, "-m", "core", "analyse", str(run_dir), "--split", "val"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
    assert analysed.returncode == 0, analysed.stderr[-2000:]
    analysis = json.loads((run_dir / "val_analysis.json").read_text())
    assert len(analysis["per_landmark"]) == 23 and analysis["images"] + analysis["missed"] == 3
    limits = analysis["bland_altman"]  # the three val phantoms' true landmarks always give an angle
    differences = np.array(limits["difference_deg"])
    assert len(limits["mean_deg"]) == len(differences) == len(limits["image_ids"]) >= 2
    assert limits["bias_deg"] == pytest.approx(differences.mean())
    assert limits["upper_deg"] - limits["lower_deg"] == pytest.approx(2 * 1.96 * differences.std(ddof=1))
    assert json.loads(analysed.stdout)["bland_altman"]["bias_deg"] == pytest.approx(limits["bias_deg"])

    # a safe checkpoint (no pickled code) that says what it is
    data = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    assert data["meta"]["format"] == FORMAT and data["meta"]["input_size"] == 64
    model = load_landmark_model(run_dir / "best.pt")
    assert isinstance(model, HeatmapLandmarkModel) and model.needs_box

    case = generate_case(99, size=128, curvature_class="reversed", patient_id="Q")
    pixels = case.image.astype(np.float32) / 255.0
    points, confidence = model.locate(pixels, case.roi_box, min_confidence=0.0)
    assert points.shape == (23, 2) and np.isfinite(points).all()
    assert confidence.shape == (23,) and ((confidence >= 0) & (confidence <= 1)).all()
    assert model.locate(pixels, None) is None  # no box, no points: the pipeline says why
    # reading the film and its mirror and averaging makes the answer independent of the facing
    assert model.mirror_average
    width = pixels.shape[1]
    x1, y1, x2, y2 = case.roi_box
    mirrored, _ = model.locate(np.ascontiguousarray(pixels[:, ::-1]), [width - x2, y1, width - x1, y2], 0.0)
    from core.data.measure import landmark_flip_index

    back = mirrored[landmark_flip_index()]
    back[:, 0] = width - back[:, 0]
    assert np.allclose(back, points, atol=1e-3)
    # the promoted copy is what Predict loads
    promoted = promotion.promote(run_dir)
    assert promoted.name == "landmarks" and isinstance(load_landmark_model(promoted / "best.pt"), HeatmapLandmarkModel)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_result(home, tmp_path):
    from core.training.landmarks import fit

    straight = tmp_path / "straight"
    fit(tiny_config(), straight)

    interrupted = tmp_path / "interrupted"

    def stop_after_first(epoch, epochs, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(), interrupted, progress_callback=stop_after_first)
    assert json.loads((interrupted / "status.json").read_text())["state"] == "cancelled"  # Ctrl-C = cancel
    fit(tiny_config(), interrupted, resume=True)

    def rows(run):
        return [{k: v for k, v in r.items() if k not in ("seconds", "split", "val_loss")}
                for r in csv.DictReader((run / "metrics.csv").open())]

    assert [r["epoch"] for r in rows(interrupted)] == ["1", "2"]  # every epoch once
    for a, b in zip(rows(straight), rows(interrupted)):
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_bad_configs_and_datasets_are_clear_errors(home, tmp_path):
    from core.runs.configs import ConfigError
    from core.training.landmarks import fit

    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        fit(tiny_config(learning_rate=0.1), tmp_path / "a")
    with pytest.raises(ConfigError, match="multiple of 32"):
        fit(tiny_config(input_size=100), tmp_path / "b")
    with pytest.raises(ConfigError, match="widths needs 5"):
        fit(tiny_config(widths=[8, 8]), tmp_path / "b")
    with pytest.raises(ConfigError, match="mirror_average must be true or false"):
        fit(tiny_config(mirror_average="maybe"), tmp_path / "b")
    for ignored_before in ("crop", "workers"):  # accepted and silently ignored before: now refused by name
        with pytest.raises(ConfigError, match=f"unknown config key '{ignored_before}'"):
            fit(tiny_config(**{ignored_before: 1}), tmp_path / "b")
    with pytest.raises(ValueError, match="'nothing-here' has no images"):  # the store's DatasetError
        fit(tiny_config(dataset="nothing-here"), tmp_path / "c")
    assert json.loads((tmp_path / "c" / "status.json").read_text())["state"] == "failed"

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(tiny_config(epochs=0)))
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "core", "train", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "epochs must be >= 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr

    # evaluate goes by the run's task; a run without its weights is a clear error
    detector_run = tmp_path / "detector-run"
    detector_run.mkdir()
    (detector_run / "config.yaml").write_text(yaml.safe_dump({"task": "detect", "model": "yolov8n.yaml", "dataset": "ph"}))
    done = subprocess.run([sys.executable, "-m", "core", "evaluate", str(detector_run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "best.pt" in done.stderr and "Traceback" not in done.stderr


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    """The loader picks heatmap or YOLO-pose by the checkpoint's format; anything else is a ValueError."""
    from core.training.landmarks import load as load_landmark_model

    not_a_checkpoint = tmp_path / "best.pt"
    torch.save({"state_dict": {}, "meta": {"format": "something else", "task": "landmarks"}}, not_a_checkpoint)
    with pytest.raises(ValueError):
        load_landmark_model(not_a_checkpoint)


def test_the_example_config_shows_the_defaults():
    from core.runs.configs import HeatmapConfig

    shipped = yaml.safe_load((ROOT / "configs" / "landmarks.yaml").read_text())
    assert HeatmapConfig.from_dict(shipped) == HeatmapConfig(dataset="default")
    assert shipped["model"] == "landmark-unet" and shipped["task"] == "landmarks"


@pytest.mark.slow
def test_a_background_run_can_be_cancelled_and_resumed(home):
    """The Train page's path: launch.start_run -> a real child process; cancel (SIGTERM) keeps last.pt; resume finishes."""
    from core.runs import launch, layout
    from core.runs.configs import ConfigError

    with pytest.raises(ConfigError, match="unknown config key 'epoch_count'"):  # refused before any process starts
        launch.start_run(tiny_config(epoch_count=3))

    run_dir = launch.start_run(tiny_config(epochs=150))
    wait_for(lambda: layout.read_status(run_dir).get("epoch", 0) >= 1, timeout=120, every=0.2,
             message=lambda: (run_dir / "train.log").read_text()[-2000:])
    assert layout.read_status(run_dir)["state"] == "running", (run_dir / "train.log").read_text()[-2000:]
    assert launch.cancel_run(run_dir)["state"] == "cancelled"
    stopped_at = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= stopped_at < 150

    launch.resume_run(run_dir)
    wait_for(lambda: layout.read_status(run_dir)["state"] not in ("queued", "running"), timeout=300, every=0.5)
    status = layout.read_status(run_dir)
    assert status["state"] == "done" and status["epoch"] == 150, status
    epochs = [int(r["epoch"]) for r in csv.DictReader((run_dir / "metrics.csv").open())]
    assert epochs == list(range(1, 151))  # nothing lost, nothing twice


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([8, 10, 12, 14, 16, "colour"]), seed=st.integers(0, 2**32 - 1),
       size=st.tuples(st.integers(4, 90), st.integers(4, 90)), spread=st.sampled_from([1, 2, 3, 40, None]))
def test_equalising_by_counting_greys_gives_numpys_quantile_and_interp_bit_for_bit(bits, seed, size, spread):
    """The counted path for read_image's integer greys (8- to 16-bit films) must equal np.quantile + np.interp
    exactly: the model was trained on windows equalised the slow way. Colour/luma films (greys off any integer
    grid) keep the slow way. Nearly flat regions (1-3 greys) and regions under 16 pixels are in the draw."""
    from core.training.landmarks import equalise

    rng = np.random.default_rng(seed)
    height, width = size
    if bits == "colour":  # luma of an RGB film: weighted sums, not integer steps
        rgb = rng.integers(0, 256, (height, width, 3)).astype(np.float32)
        film = (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) / np.float32(255)
    else:
        steps = 2 ** bits - 1
        top = steps if spread is None else min(steps, spread)
        film = (rng.integers(0, top + 1, (height, width)).astype(np.float32) / np.float32(steps))
    region = film[height // 4: height // 4 + max(1, height // 2), width // 4: width // 4 + max(1, width // 2)]
    expected = film
    finite = region[np.isfinite(region)]
    if finite.size >= 16 and float(np.ptp(finite)) > 0:
        levels = np.quantile(finite, np.linspace(0.0, 1.0, 257))
        expected = np.interp(film, levels, np.linspace(0.0, 1.0, 257)).astype(np.float32)
    got = equalise(film, region)
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_a_films_grey_codes_found_once_give_the_same_windows(bits):
    """locate finds a film's grey codes once and equalises each of its six windows from them: every window equals
    the one equalised from its own pixels, mirrored too, and where the window leaves the film (padding)."""
    from core.training.landmarks import GreyCodes, context_crop

    steps = 2 ** bits - 1
    rng = np.random.default_rng(bits)
    film = (rng.integers(0, steps + 1, (300, 200)).astype(np.float32) / np.float32(steps))
    greys = GreyCodes.of(film)
    assert greys is not None and greys.steps == steps
    mirrored = np.ascontiguousarray(film[:, ::-1])
    for box in ([40.0, 60.0, 150.0, 250.0], [0.0, 0.0, 120.0, 90.0], [150.5, 220.2, 199.0, 299.0]):
        for pixels, codes in ((film, greys), (mirrored, greys.mirrored())):
            plain, window = context_crop(pixels, box, 32, 0.1, equalised=True)
            counted, same_window = context_crop(pixels, box, 32, 0.1, equalised=True, greys=codes)
            assert window == same_window and torch.equal(plain, counted)
    assert GreyCodes.of(film * np.float32(0.999)) is None  # greys off the integer grid: the plain way
