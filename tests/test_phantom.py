"""Synthetic lateral radiographs: ground truth that agrees with `measure`, images that look the part,
and the on-disk layouts other modules import (real files, a real `python -m core` subprocess)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from openpyxl import load_workbook
from PIL import Image

from core.data.measure import LANDMARK_NAMES, classify_cobb, measure_landmarks, roi_box_from_landmarks
from core.data.phantom import (
    CSXA_CURVATURE_COLUMN,
    PhantomError,
    case_landmarks,
    contact_sheet,
    generate_case,
    write_phantoms,
)
from core.settings import CLASSES

ROOT = Path(__file__).resolve().parents[1]
INDEX = {name: i for i, name in enumerate(LANDMARK_NAMES)}


def _mean_around(image: np.ndarray, point, radius: int = 1) -> float:
    x, y = int(round(point[0])), int(round(point[1]))
    return float(image[y - radius:y + radius + 1, x - radius:x + radius + 1].astype(float).mean())


def test_same_seed_gives_byte_identical_image_and_truth():
    first, again = generate_case(7, size=128), generate_case(7, size=128)
    assert first.image.dtype == np.uint8 and first.image.shape[0] == 128
    assert first.image.tobytes() == again.image.tobytes()
    assert np.array_equal(first.landmarks, again.landmarks) and first.roi_box == again.roi_box
    other = generate_case(8, size=128)
    assert other.image.tobytes() != first.image.tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_landmarks_inside_the_image_and_box_around_c2_to_c7(seed):
    case = generate_case(seed, size=96 + 8 * seed)
    x, y = case.landmarks[:, 0], case.landmarks[:, 1]
    assert np.all(np.isfinite(case.landmarks))
    assert np.all((x >= 0) & (x <= case.width - 1) & (y >= 0) & (y <= case.height - 1))
    x1, y1, x2, y2 = case.roi_box
    assert np.all((x >= x1) & (x <= x2) & (y >= y1) & (y <= y2))
    assert case.roi_box == roi_box_from_landmarks(case.landmarks, (case.width, case.height))


def test_measured_cobb_of_ground_truth_equals_the_target_across_many_curves():
    rng = np.random.default_rng(0)
    worst = 0.0
    for seed in range(100):
        target = float(rng.uniform(-40, 55))
        profile = ("arc", "sigmoid1", "sigmoid2")[seed % 3]
        landmarks, size, aimed, facing = case_landmarks(seed, size=int(rng.choice([128, 512, 2048])),
                                                        cobb_c2c7=target, profile=profile)
        assert aimed == target
        measured = measure_landmarks(landmarks, facing=facing)
        worst = max(worst, abs(measured.cobb_c2c7 - target))
        # Upright neck leaning forward: C2 sits anterior of C7 along the image's horizontal.
        c7_mid = landmarks[[INDEX["C7 bottom left"], INDEX["C7 bottom right"]]].mean(axis=0)
        forward = (landmarks[INDEX["C2 centroid"], 0] - c7_mid[0]) * (1 if facing == "right" else -1)
        assert forward > 0
    assert worst < 1.0


def test_each_class_is_reachable_and_labels_agree_with_the_rule():
    for cls in CLASSES:
        case = generate_case(3, size=96, curvature_class=cls)
        assert case.curvature_class == cls == classify_cobb(case.cobb_c2c7)
        assert abs(case.cobb_c2c7 - case.target_cobb) < 1.0
    drawn = set()
    for seed in range(30):
        landmarks, _, _, facing = case_landmarks(seed, size=128)
        drawn.add(measure_landmarks(landmarks, facing=facing).rule_class)
    assert drawn == set(CLASSES)


def test_targets_keep_clear_of_the_thresholds():
    for seed in range(60):
        cls = CLASSES[seed % 3]
        _, _, target, _ = case_landmarks(seed, size=128, curvature_class=cls)
        low, high = {"normal": (14, 40), "straightened": (-2, 6), "reversed": (-25, -8)}[cls]
        assert low <= target <= high


def test_facing_left_is_the_mirror_of_facing_right():
    right = generate_case(11, size=128, facing="right")
    left = generate_case(11, size=128, facing="left")
    assert (right.facing, left.facing) == ("right", "left")
    # Pixels mirror exactly except where the side marker is drawn (it stays readable).
    assert np.mean(left.image == right.image[:, ::-1]) > 0.97
    width = right.width
    for name in LANDMARK_NAMES:
        mirrored = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert left.landmarks[INDEX[name], 0] == pytest.approx(width - 1 - right.landmarks[INDEX[mirrored], 0])
        assert left.landmarks[INDEX[name], 1] == pytest.approx(right.landmarks[INDEX[mirrored], 1])
    assert left.cobb_c2c7 == pytest.approx(right.cobb_c2c7, abs=1e-9)
    # On the left-facing image the anterior (face) side of each body is the image's left.
    assert left.landmarks[INDEX["C4 top left"], 0] < left.landmarks[INDEX["C4 top right"], 0]
    assert left.probes["airway"][0, 0] < left.landmarks[INDEX["C4 top left"], 0]


def test_16_bit_output_uses_more_than_8_bits():
    deep = generate_case(5, size=128, bit_depth=16)
    shallow = generate_case(5, size=128, bit_depth=8)
    assert deep.image.dtype == np.uint16 and deep.image.max() > 255
    assert len(np.unique(deep.image)) > 256
    assert np.any(deep.image % 256 != 0)
    assert np.array_equal(deep.landmarks, shallow.landmarks)
    assert np.abs(deep.image.astype(int) / 257 - shallow.image).max() <= 1.0


@pytest.mark.parametrize("seed,size", [(0, 256), (1, 256), (2, 256), (4, 512)])
def test_image_shows_bright_bodies_dark_discs_and_a_dark_airway(seed, size):
    case = generate_case(seed, size=size)
    image = case.image.astype(float)
    bodies = [_mean_around(image, p) for p in case.probes["bodies"]]
    discs = [_mean_around(image, p) for p in case.probes["discs"]]
    assert np.mean(bodies) > np.mean(discs) + 5
    assert sum(b > d for b, d in zip(bodies, discs)) >= 3  # a narrowed, degenerate disc may blur away
    airway = _mean_around(image, case.probes["airway"][0], 2)
    soft = _mean_around(image, case.probes["soft_tissue"][0], 2)
    assert airway < soft - 5
    assert image.std() > 20  # not a flat image


def test_bad_requests_raise_one_clear_error(tmp_path):
    with pytest.raises(PhantomError, match="unknown curvature class"):
        generate_case(1, curvature_class="kyphotic")
    with pytest.raises(PhantomError, match="size"):
        generate_case(1, size=10)
    with pytest.raises(PhantomError, match="bit_depth"):
        generate_case(1, size=96, bit_depth=12)
    with pytest.raises(PhantomError, match="cobb_c2c7"):
        generate_case(1, cobb_c2c7=120.0)
    with pytest.raises(PhantomError, match="seed"):
        generate_case(-1, size=96)
    with pytest.raises(PhantomError, match="unknown format"):
        write_phantoms(tmp_path / "x", patients=1, size=96, formats=("png",))


def test_patients_keep_curvature_and_facing_across_images(tmp_path):
    summary = write_phantoms(tmp_path / "set", patients=3, images_per_patient=3, seed=4, size=96, formats=("yolo",))
    assert summary["images"] == 9 and sum(summary["classes"].values()) == 9
    rows = [json.loads(line) for line in (tmp_path / "set" / "labels.jsonl").read_text().splitlines()]
    by_patient: dict[str, list[dict]] = {}
    for row in rows:
        by_patient.setdefault(row["patient_id"], []).append(row)
    assert len(by_patient) == 3
    for images in by_patient.values():
        assert len({(r["curvature_class"], r["facing"], round(r["target_cobb"], 6)) for r in images}) == 1
        assert len({r["seed"] for r in images}) == 3
        assert len({(tmp_path / "set" / r["file"]).read_bytes() for r in images}) == 3
    splits = {path.stem[:5]: path.parent.name for path in (tmp_path / "set" / "yolo" / "images").rglob("*.png")}
    assert len(splits) == 3  # each patient sits in one split only
    again = write_phantoms(tmp_path / "again", patients=3, images_per_patient=3, seed=4, size=96)
    assert again["classes"] == summary["classes"]
    assert (tmp_path / "again" / "labels.jsonl").read_bytes() == (tmp_path / "set" / "labels.jsonl").read_bytes()
    with pytest.raises(PhantomError, match="already holds"):
        write_phantoms(tmp_path / "set", patients=1, size=96)


@pytest.mark.slow
def test_rendering_in_worker_processes_writes_the_same_set_byte_for_byte(tmp_path):
    # the demo renders on every core; a set must not depend on how many
    serial = write_phantoms(tmp_path / "one", patients=5, images_per_patient=2, seed=9, size=96, formats=("csxa",))
    parallel = write_phantoms(tmp_path / "two", patients=5, images_per_patient=2, seed=9, size=96,
                              formats=("csxa",), workers=2)
    assert parallel["classes"] == serial["classes"] and parallel["facing"] == serial["facing"]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) > 20 and files == sorted(p.relative_to(tmp_path / "two")
                                               for p in (tmp_path / "two").rglob("*") if p.is_file())
    for name in files:
        if name.suffix != ".xlsx":  # the workbook stamps its creation time
            assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    with pytest.raises(PhantomError, match="workers"):
        write_phantoms(tmp_path / "bad", patients=1, size=96, workers=0)


@pytest.mark.slow
def test_cli_writes_every_layout_with_consistent_counts_and_measurable_labels(tmp_path):
    out = tmp_path / "phantoms"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "core", "phantom", "--out", str(out), "--patients", "9", "--seed", "1", "--size", "128",
         "--format", "csxa", "--format", "yolo", "--format", "dicom"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "normal 3, straightened 3, reversed 3" in run.stdout

    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 9 and len(list((out / "images").glob("*.png"))) == 9
    with (out / "manifest.csv").open(newline="") as handle:
        manifest = list(csv.DictReader(handle))
    assert [m["path"] for m in manifest] == [label["file"] for label in labels]
    for label, row in zip(labels, manifest):
        image = Image.open(out / label["file"])
        assert image.size == (label["width"], label["height"])
        assert 0.1 <= label["pixel_spacing_mm"] * label["height"] / 1024 <= 0.21  # ~0.1-0.2 mm/px at 1024 px
        assert row["label"] == label["curvature_class"] and row["patient_id"] == label["patient_id"]
        assert [float(row[k]) for k in ("x1", "y1", "x2", "y2")] == pytest.approx(label["roi_box"], abs=0.01)

    # CSXA: PNG + Labelme JSON per case, sheet with a title row then the header.
    csxa = out / "csxa"
    pngs, jsons = sorted((csxa / "datasets-PNG").glob("*.png")), sorted((csxa / "datasets-PNG").glob("*.json"))
    assert len(pngs) == len(jsons) == 9 and [p.stem for p in pngs] == [j.stem for j in jsons]
    sheet = load_workbook(csxa / "datasets.xlsx")["Sheet1"]
    rows = list(sheet.iter_rows(values_only=True))
    assert rows[1][:4] == ("Number", "Age", "Sex", CSXA_CURVATURE_COLUMN) and len(rows) == 2 + 9
    codes = {row[0]: row[3] for row in rows[2:]}
    with (csxa / "datasets.csv").open(newline="") as handle:
        assert len(list(csv.reader(handle))) == 2 + 9
    by_patient = {label["patient_id"]: label for label in labels}
    results = []
    for facing in ("left", "right"):  # the phantom's facing is ground truth (labels.jsonl)
        files = [str(j) for j in jsons if by_patient[f"P{int(j.stem[:4]):04d}"]["facing"] == facing]
        measured = subprocess.run([sys.executable, "-m", "core", "measure", "--json", "--facing", facing, *files],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert measured.returncode == 0, measured.stdout + measured.stderr
        results += measured.stdout.splitlines()
    assert len(results) == 9
    for line in results:
        result = json.loads(line)
        number = int(Path(result["file"]).stem[:4])
        truth = by_patient[f"P{number:04d}"]
        assert result["cobb_c2c7"] == pytest.approx(truth["cobb_c2c7"], abs=0.01)
        assert result["rule_class"] == truth["curvature_class"]
        assert codes[number] == {"normal": 1, "straightened": 2, "reversed": 5}[truth["curvature_class"]]

    # YOLO: split by patient, one normalised box per image.
    yolo = out / "yolo"
    images = {split: sorted((yolo / "images" / split).glob("*.png")) for split in ("train", "val")}
    assert len(images["train"]) + len(images["val"]) == 9 and images["val"]
    for split, files in images.items():
        for path in files:
            values = (yolo / "labels" / split / f"{path.stem}.txt").read_text().split()
            assert values[0] == "0" and len(values) == 5 and all(0 < float(v) <= 1 for v in values[1:])
    assert "0: cervical_spine" in (yolo / "data.yaml").read_text()

    # DICOM: readable, fake identity present (for de-identification), pixels and spacing as the PNG.
    dicoms = sorted((out / "dicom").glob("*.dcm"))
    assert len(dicoms) == 9
    ds = pydicom.dcmread(dicoms[0])
    assert str(ds.PatientName) == "Phantom^P0001" and ds.PatientID == "P0001" and len(ds.PatientBirthDate) == 8
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.Modality == "CR"
    png = np.asarray(Image.open(out / "images" / "P0001_01.png"))
    assert np.array_equal(ds.pixel_array, png)
    assert float(ds.PixelSpacing[0]) == pytest.approx(labels[0]["pixel_spacing_mm"], rel=1e-5)


def test_dicom_16_bit_and_monochrome1(tmp_path):
    write_phantoms(tmp_path / "deep", patients=1, size=96, bit_depth=16, formats=("dicom",),
                   dicom_photometric="MONOCHROME1")
    ds = pydicom.dcmread(next((tmp_path / "deep" / "dicom").glob("*.dcm")))
    assert (ds.BitsAllocated, ds.BitsStored, ds.PhotometricInterpretation) == (16, 12, "MONOCHROME1")
    png = np.asarray(Image.open(next((tmp_path / "deep" / "images").glob("*.png")))).astype(int)
    assert np.array_equal(ds.pixel_array.astype(int), 4095 - (png >> 4))
    assert float(ds.WindowWidth) == 4096


def test_contact_sheet_has_a_tile_per_class_and_facing(tmp_path):
    path = contact_sheet(tmp_path / "sheet.png", seed=0, size=96)
    assert Image.open(path).size == (3 * 96, 2 * 96)


def test_views_carry_the_look_of_clinical_films():
    """Across views: burned-in text, borders, top/bottom collimation, strong unsharp masking, film curves, JPEG,
    cross-table backboards and landscape frames all occur; each image stays byte-identical for its seed."""
    from core.data.phantom.cases import _plan

    params = [_plan(seed, 256, None, None, None, None, None, None).view for seed in range(80)]
    looks = {
        "text": sum(bool(v.params["text"]) for v in params), "border": sum(v.params["border"] > 0 for v in params),
        "collimate_tb": sum(v.params["collimate_tb"] is not None for v in params),
        "strong_sharpen": sum(v.params["strong_sharpen"] > 0 for v in params),
        "film_curve": sum(v.params["film_curve"] > 0 for v in params),
        "jpeg": sum(v.params["jpeg_quality"] > 0 for v in params),
        "backboard": sum(v.params["backboard"] > 0 for v in params),
        "landscape": sum(v.width > v.height for v in params),
    }
    assert all(count >= 3 for count in looks.values()), looks
    assert looks["text"] < 70 and looks["jpeg"] < 50  # clean films stay common too
    seed = next(s for s, v in enumerate(params) if v.params["jpeg_quality"] and v.params["text"])
    case, again = generate_case(seed, size=256), generate_case(seed, size=256)
    assert case.image.tobytes() == again.image.tobytes()
    # text and markers keep off the spine: the ROI looks the same with and without them
    x1, y1, x2, y2 = (int(round(v)) for v in case.roi_box)
    assert case.image[y1:y2, x1:x2].std() > 10


def test_film_artifact_augmentation_is_repeatable_and_stays_in_range():
    """The training-time counterpart (core.training.crops.film_artifacts): same generator, same batch."""
    import torch

    from core.training.crops import FilmArtifacts, classifier_crop, film_artifacts

    case = generate_case(4, size=256)
    crop = classifier_crop(case.image.astype(np.float32) / 255, case.roi_box, 64)
    batch = crop[None].repeat(24, 1, 1, 1)
    first = film_artifacts(batch, 1.0, torch.Generator().manual_seed(5))
    again = film_artifacts(batch, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == batch.shape
    assert first.min() >= 0 and first.max() <= 1
    changed = [(first[i] - batch[i]).abs().mean().item() > 1e-3 for i in range(len(batch))]
    assert sum(changed) >= 20  # nearly every image got at least one artifact
    assert torch.equal(film_artifacts(batch, 0.0, torch.Generator().manual_seed(5)), batch)
    assert FilmArtifacts(0.5)(crop).shape == crop.shape
