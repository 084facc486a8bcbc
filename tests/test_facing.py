"""Which way the patient faces comes from the film (airway anterior, posterior elements behind the bodies), not
from the C2-over-C7 lean: a neck leaning back must not turn a lordosis into a kyphosis."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data.imaging import read_image
from core.data.measure import (infer_facing, landmark_flip_index, measure_landmarks, read_facing, read_labelme,
                               write_labelme)
from core.data.phantom import generate_case

ROOT = Path(__file__).resolve().parents[1]
DEV_FILMS = ROOT.parent / "shared" / "real-films" / "csxa-dev" / "datasets-PNG"
# CSXA's own calculator on these films (shared/real-films/README.md); every one faces image-left
OFFICIAL_COBB = {"0001035": -4.4, "0003035": 22.1, "0005035": 34.4, "0007035": -0.3, "0009035": 18.8,
                 "0011036": 28.3}


def _pixels(case) -> np.ndarray:
    return case.image.astype(np.float32) / float(np.iinfo(case.image.dtype).max)


def _mirror(pixels: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The film flipped left-right, with its landmarks renamed the way CSXA names image sides."""
    points = landmarks[landmark_flip_index()].copy()
    points[:, 0] = pixels.shape[1] - points[:, 0]
    return np.ascontiguousarray(pixels[:, ::-1]), points


@pytest.mark.parametrize("facing", ["left", "right"])
@pytest.mark.parametrize("cobb", [-25.0, 0.0, 40.0])  # flexion (kyphosis), straight, extension (strong lordosis)
def test_phantoms_get_the_right_facing_and_sign_from_the_film(facing, cobb):
    for seed in (3, 11):
        case = generate_case(seed, size=256, cobb_c2c7=cobb, facing=facing)
        found = read_facing(_pixels(case), case.landmarks)
        assert (found.facing, found.source) == (facing, "film"), (seed, found)
        angle = measure_landmarks(case.landmarks, facing=found.facing).cobb_c2c7
        assert angle == pytest.approx(case.cobb_c2c7, abs=0.01)
        # the same film mirrored faces the other way, and keeps its angle
        pixels, points = _mirror(_pixels(case), case.landmarks)
        flipped = read_facing(pixels, points)
        assert flipped.facing != facing and flipped.source == "film"
        assert measure_landmarks(points, facing=flipped.facing).cobb_c2c7 == pytest.approx(case.cobb_c2c7, abs=0.01)


def test_a_neck_leaning_back_keeps_its_lordosis():
    """The lean puts C2 behind C7 here, as on the real film 0005035; the film still says which way it faces."""
    from scipy import ndimage

    case = generate_case(5, size=256, cobb_c2c7=35.0, facing="left")
    pixels = _pixels(case)
    # lean the whole neck back: rotate the film and its points together
    angle = -25.0  # degrees; positive x to the right, y down: the head goes towards image-right (posterior)
    rotated = ndimage.rotate(pixels, angle, reshape=False, order=1, mode="nearest")
    h, w = pixels.shape
    theta = np.radians(angle)
    # scipy rotates about the image centre, counter-clockwise on screen for a positive angle
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    points = (case.landmarks - [w / 2, h / 2]) @ rot.T + [w / 2, h / 2]
    assert infer_facing(points) == "right", "the set-up must fool the lean, or the test shows nothing"
    found = read_facing(rotated, points)
    assert (found.facing, found.source) == ("left", "film")
    assert measure_landmarks(points, facing=found.facing).cobb_c2c7 == pytest.approx(case.cobb_c2c7, abs=0.01)


def _leaning_back(seed: int = 5, cobb: float = 35.0):
    """A left-facing lordotic phantom rotated so C2 sits behind C7: the lean alone calls it right-facing."""
    from scipy import ndimage

    case = generate_case(seed, size=256, cobb_c2c7=cobb, facing="left")
    pixels = _pixels(case)
    angle = -25.0
    rotated = ndimage.rotate(pixels, angle, reshape=False, order=1, mode="nearest")
    h, w = pixels.shape
    theta = np.radians(angle)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    return case, rotated, (case.landmarks - [w / 2, h / 2]) @ rot.T + [w / 2, h / 2]


def test_the_label_page_measure_signs_a_reading_by_the_film():
    """The Label page's live angle and rule class (labels.rule_check) read the facing from the film it shows."""
    from core.data import labels

    case, film, points = _leaning_back()
    check = labels.rule_check("normal", points, film=film)
    assert check.facing.facing == "left" and check.facing.source == "film"
    assert check.cobb_c2c7 == pytest.approx(case.cobb_c2c7, abs=0.01) and not check.contradicts
    assert labels.rule_check("normal", points).cobb_c2c7 == pytest.approx(-case.cobb_c2c7, abs=0.01)  # the lean


def test_the_users_facing_wins_and_a_blank_film_falls_back_on_the_lean():
    case = generate_case(2, size=256, cobb_c2c7=20.0, facing="right")
    assert read_facing(_pixels(case), case.landmarks, "left") == read_facing(None, case.landmarks, "left")
    assert read_facing(None, case.landmarks, "left").source == "user"
    blank = read_facing(np.zeros_like(_pixels(case)), case.landmarks)
    assert blank.source == "lean" and "set it by hand" in blank.describe()
    with pytest.raises(ValueError):
        read_facing(None, case.landmarks, "up")


def test_measure_command_reads_the_facing_from_the_film_beside_the_json(tmp_path):
    case = generate_case(8, size=256, cobb_c2c7=30.0, facing="left")
    from PIL import Image

    Image.fromarray(case.image).save(tmp_path / "film.png")
    write_labelme(tmp_path / "film.json", case.landmarks, "film.png", (case.width, case.height))
    out = subprocess.run([sys.executable, "-m", "core", "measure", str(tmp_path / "film.json"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.splitlines()[0])
    assert row["facing"] == "left" and row["facing_source"] == "film"
    assert row["cobb_c2c7"] == pytest.approx(case.cobb_c2c7, abs=0.01)
    # --facing overrides the film
    out = subprocess.run([sys.executable, "-m", "core", "measure", str(tmp_path / "film.json"), "--json",
                          "--facing", "right"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    row = json.loads(out.stdout.splitlines()[0])
    assert row["facing"] == "right" and row["facing_source"] == "user"


@pytest.mark.skipif(not DEV_FILMS.is_dir(), reason="the real CSXA development films are not on this machine")
@pytest.mark.parametrize("case", sorted(OFFICIAL_COBB))
def test_real_dev_films_face_left_and_match_the_official_angle(case):
    record = read_labelme(DEV_FILMS / f"{case}.json")
    pixels = read_image(next(DEV_FILMS.glob(f"{case}.png"))).pixels
    found = read_facing(pixels, record.landmarks)
    assert (found.facing, found.source) == ("left", "film")
    assert measure_landmarks(record.landmarks, facing=found.facing).cobb_c2c7 == pytest.approx(OFFICIAL_COBB[case],
                                                                                               abs=0.06)
    mirrored, points = _mirror(pixels, record.landmarks)
    assert read_facing(mirrored, points).facing == "right"
