"""Measurements against hand-built landmark geometry (angles known by construction)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from core.data.measure import (
    LANDMARK_NAMES, LandmarkError, RuleThresholds, classify_cobb, infer_facing, measure_landmarks,
    read_labelme, roi_box_from_landmarks, write_labelme,
)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def stacked_spine(c2_tilt_deg: float, facing: str = "right", offsets=(0, 0, 0, 0, 0)) -> np.ndarray:
    """C3–C7 as level 30 x 20 px boxes, C2's inferior endplate tilted anterior-up by ``c2_tilt_deg``.

    ``offsets`` shifts each of C3..C7 posteriorly (px), to build a known curve for CCI.
    Built facing right (anterior = +x), mirrored for facing left.
    """
    points = {}
    top = 200.0
    points["C2 bottom left"] = (100.0, top - 8)
    points["C2 bottom right"] = (130.0, top - 8 - 30 * math.tan(math.radians(c2_tilt_deg)))
    points["C2 centroid"] = (125.0, top - 30)  # forward of C7: the neck leans forward
    for i, level in enumerate(("C3", "C4", "C5", "C6", "C7")):
        y0 = top + i * 28
        x0 = 100.0 - offsets[i]
        points[f"{level} top left"] = (x0, y0)
        points[f"{level} top right"] = (x0 + 30, y0)
        points[f"{level} bottom left"] = (x0, y0 + 20)
        points[f"{level} bottom right"] = (x0 + 30, y0 + 20)
    landmarks = np.array([points[name] for name in LANDMARK_NAMES])
    if facing == "left":
        landmarks[:, 0] = 400 - landmarks[:, 0]
        # Mirroring swaps which image side each named corner is on.
        swapped = landmarks.copy()
        for i, name in enumerate(LANDMARK_NAMES):
            if "left" in name or "right" in name:
                other = name.replace("left", "X").replace("right", "left").replace("X", "right")
                swapped[LANDMARK_NAMES.index(other)] = landmarks[i]
        landmarks = swapped
    return landmarks


def rotate(landmarks: np.ndarray, degrees: float, centre=(200.0, 250.0)) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (landmarks - centre) @ rot.T + centre


@pytest.mark.parametrize("tilt", [-20.0, -5.0, 0.0, 12.0, 30.0])
@pytest.mark.parametrize("facing", ["right", "left"])
def test_cobb_is_the_endplate_angle_with_lordosis_positive(tilt, facing):
    result = measure_landmarks(stacked_spine(tilt, facing), facing=facing)
    assert result.cobb_c2c7 == pytest.approx(tilt, abs=1e-6)
    assert result.cobb_c2c6 == pytest.approx(tilt, abs=1e-6)


@pytest.mark.parametrize("angle", [-15.0, 8.0, 90.0])
def test_rotation_of_the_film_changes_nothing(angle):
    upright = measure_landmarks(stacked_spine(18.0), facing="right")
    turned = measure_landmarks(rotate(stacked_spine(18.0), angle), facing="right")
    assert turned.cobb_c2c7 == pytest.approx(upright.cobb_c2c7, abs=1e-6)
    assert turned.cci == pytest.approx(upright.cci, abs=1e-6)


@pytest.mark.parametrize("facing", ["right", "left"])
def test_facing_is_inferred_from_the_forward_lean(facing):
    landmarks = rotate(stacked_spine(10.0, facing), 2.0)
    assert infer_facing(landmarks) == facing
    assert measure_landmarks(landmarks).cobb_c2c7 == pytest.approx(10.0, abs=1e-6)


def test_cci_toyama_and_arc_depth_follow_the_curve():
    # Middle vertebrae pushed posteriorly -> the posterior line bows back: kyphotic, negative CCI and depth.
    kyphotic = measure_landmarks(stacked_spine(0.0, offsets=(3, 6, 6, 3, 0)), facing="right", pixel_spacing_mm=0.2)
    # Pushed anteriorly (negative offsets) -> lordotic, positive.
    lordotic = measure_landmarks(stacked_spine(0.0, offsets=(-3, -6, -6, -3, 0)), facing="right")
    assert kyphotic.cci < 0 < lordotic.cci
    assert kyphotic.arc_depth_px < 0 < lordotic.arc_depth_px
    # Chord from C2 (100, 192) to C7 bottom (100, 332) is vertical: distances are the x offsets exactly.
    assert lordotic.toyama_px == pytest.approx([3, 6, 6, 3], abs=1e-9)
    assert lordotic.cci == pytest.approx(18 / 140 * 100, abs=1e-9)
    assert kyphotic.arc_depth_mm == pytest.approx(kyphotic.arc_depth_px * 0.2)


def test_rule_class_thresholds_are_configurable(monkeypatch):
    assert [classify_cobb(a) for a in (25, 10, 9.9, 0, -4, -10)] == [
        "normal", "normal", "straightened", "straightened", "reversed", "reversed"]
    assert classify_cobb(9.0, RuleThresholds(normal_min_deg=8)) == "normal"
    monkeypatch.setenv("CERVICURVE_NORMAL_MIN_DEG", "20")
    assert classify_cobb(15.0) == "straightened"
    with pytest.raises(ValueError):
        RuleThresholds(normal_min_deg=-5, reversed_max_deg=0)


def test_bad_landmarks_are_refused_with_the_missing_names():
    landmarks = stacked_spine(10.0)
    landmarks[LANDMARK_NAMES.index("C5 bottom left")] = np.nan
    with pytest.raises(LandmarkError, match="C5 bottom left"):
        measure_landmarks(landmarks, facing="right")
    with pytest.raises(LandmarkError, match="23 landmarks"):
        measure_landmarks(np.zeros((5, 2)))


def test_roi_box_contains_c2_to_c7_and_is_clipped():
    landmarks = stacked_spine(10.0)
    x1, y1, x2, y2 = roi_box_from_landmarks(landmarks, image_size=(400, 500))
    assert x1 < landmarks[:, 0].min() and x2 > landmarks[:, 0].max()
    assert y1 < landmarks[:, 1].min() and y2 > landmarks[:, 1].max()
    assert roi_box_from_landmarks(landmarks - [95, 180], image_size=(400, 500))[:2] == [0.0, 0.0]


def test_labelme_round_trip_and_cli(tmp_path):
    for i, (tilt, facing) in enumerate([(20.0, "right"), (-8.0, "left")]):
        write_labelme(tmp_path / f"case{i}.json", stacked_spine(tilt, facing), f"case{i}.png", (400, 500))
    record = read_labelme(tmp_path / "case0.json")
    assert record.image_size == (400, 500) and record.image_path == "case0.png"
    assert np.allclose(record.landmarks, stacked_spine(20.0))
    (tmp_path / "broken.json").write_text("{not json")
    out = subprocess.run(
        [sys.executable, "-m", "core", "measure", "--json", *sorted(map(str, tmp_path.glob("*.json")))],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1  # one file failed, the others were still measured
    assert "error" in rows[0] and "broken.json" in rows[0]["error"]
    assert rows[1]["cobb_c2c7"] == pytest.approx(20.0, abs=1e-3) and rows[1]["rule_class"] == "normal"
    assert rows[2]["cobb_c2c7"] == pytest.approx(-8.0, abs=1e-3) and rows[2]["rule_class"] == "reversed"
    assert {"file", "cobb_c2c7", "cobb_c2c6", "cci", "arc_depth_px", "rule_class"} <= set(rows[1])
