"""Importers, exports and splits on real small files written by the tests themselves."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.data.measure import LANDMARK_CROP_MARGIN
from core import settings
from core.data import datasets, deid, exports, importers
from core.cli import main as cli_main
from core.data.datasets import DatasetError
from core.data.measure import LANDMARK_NAMES, measure_landmarks, roi_box_from_landmarks, write_labelme
from core.data.store import AnnotationStore

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- fixtures built here


def write_png(path: Path, seed: int, size: tuple[int, int] = (96, 128), bits: int = 8) -> Path:
    """A small grayscale 'radiograph' whose content depends on the seed (so each has its own hash)."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0.2, 0.8, width)[None, :] * np.ones((height, 1))
    pixels = np.clip(ramp + rng.normal(0, 0.05, (height, width)), 0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        Image.fromarray((pixels * 65535).astype(np.uint16)).save(path)
    else:
        Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(path)
    return path


def column_landmarks(bend_deg: float, origin=(30.0, 20.0), facing: str = "right") -> np.ndarray:
    """23 CSXA landmarks of a C2–C7 column whose endplates tilt progressively by ``bend_deg`` per level."""
    points = []
    x0, y0 = origin
    sign = 1.0 if facing == "right" else -1.0
    for level in range(6):  # C2 bottom, then C3..C7
        angle = np.radians(bend_deg * (level - 2.5)) * sign
        cx, cy = x0 + 20.0, y0 + 12.0 + level * 15.0
        half = np.array([np.cos(angle), -np.sin(angle)]) * 10.0
        top = np.array([cx, cy - 5.0])
        bottom = np.array([cx, cy + 5.0])
        if level == 0:
            points += [[cx, cy - 8.0], list(bottom - half), list(bottom + half)]
        else:
            points += [list(top - half), list(top + half), list(bottom - half), list(bottom + half)]
    return np.array(points, dtype=float)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture()
def store(workspace):
    with AnnotationStore() as opened:
        yield opened


# ---------------------------------------------------------------- class folders


def test_folder_import_maps_synonyms_reads_sidecars_and_reports_bad_files(workspace, tmp_path, store):
    src = tmp_path / "tree"
    a = write_png(src / "lordotic" / "a.png", 1)
    write_png(src / "Straight" / "b.png", 2)
    write_png(src / "kyphotic" / "site2" / "c.png", 3)
    write_png(src / "normal" / "d.png", 4)
    (src / "normal" / "d.json").write_text(json.dumps({"patient_id": "P7"}))
    (src / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "normal" / "dup.png").write_bytes(a.read_bytes())
    write_png(src / "misc" / "e.png", 5)

    report = importers.import_folder(src, dataset="tree", store=store)

    assert report.imported == 5
    reasons = dict(report.skipped)
    assert set(reasons) == {"normal/broken.png", "normal/dup.png"}
    assert "broken.png" in reasons["normal/broken.png"]
    assert "same image as lordotic/a.png" == reasons["normal/dup.png"]
    assert any("1 film(s) in no class folder" in note for note in report.notes)  # misc/e.png: to label

    by_source = {Path(i.source).name: i for i in store.current_labels("tree")}
    assert {k: v.curvature_class for k, v in by_source.items()} == {
        "a.png": "normal", "b.png": "straightened", "c.png": "reversed", "d.png": "normal", "e.png": None}
    assert by_source["d.png"].patient_id == "P7" and by_source["a.png"].patient_id == "a"
    stored = workspace / by_source["a.png"].path
    sha = hashlib.sha256(a.read_bytes()).hexdigest()
    assert by_source["a.png"].path == f"images/{sha[:2]}/{sha}.png"
    assert stored.read_bytes() == a.read_bytes()
    assert (by_source["a.png"].width, by_source["a.png"].height) == (96, 128)

    again = importers.import_folder(src, dataset="tree", store=store)
    assert (again.imported, again.updated, again.unchanged) == (0, 0, 5)
    assert sum(len(store.history(i.image_id)) for i in store.images("tree")) == 4  # the unlabeled film has none


def test_progress_reports_each_checked_image_then_the_commit(workspace, tmp_path, store):
    src = tmp_path / "tree"
    for n, cls in enumerate(["normal", "straight", "kyphotic"]):
        write_png(src / cls / f"p{n}.png", n)
    (src / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    write_png(src / "misc" / "outside.png", 9)  # checked too: it comes in unlabeled
    calls = []

    def progress(done: int, total: int, name: str) -> None:
        # Images are checked before anything is written; the last call comes after the rows are in.
        calls.append((done, total, name, len(store.images("tree"))))

    report = importers.import_folder(src, dataset="tree", store=store, progress=progress)

    assert report.imported == 4
    checked = ["kyphotic/p2.png", "misc/outside.png", "normal/broken.png", "normal/p0.png", "straight/p1.png"]
    assert calls == [(n, 5, name, 0) for n, name in enumerate(checked, start=1)] + [(5, 5, "", 4)]


def test_missing_source_is_a_clear_error(workspace, tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        importers.import_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="not found"):
        importers.import_csv(tmp_path / "nowhere.csv")


# ---------------------------------------------------------------- CSV manifest


def test_csv_manifest_imports_good_rows_and_reports_bad_ones(workspace, tmp_path, store):
    src = tmp_path / "manifest"
    write_png(src / "imgs" / "one.png", 1)
    write_png(src / "imgs" / "two.png", 2, bits=16)
    write_png(src / "imgs" / "three.png", 3)
    write_png(src / "imgs" / "four.png", 4)
    rows = [
        ["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"],
        ["imgs/one.png", "normal", "P1", "10", "20", "60", "110", "val"],
        ["imgs/two.png", "kyphotic", "P2", "", "", "", "", ""],
        ["imgs/three.png", "sigmoid", "P3", "", "", "", "", ""],
        ["imgs/four.png", "normal", "P4", "60", "20", "10", "110", ""],
        ["imgs/missing.png", "normal", "P5", "", "", "", "", ""],
        ["imgs/three.png", "normal", "P3", "10", "", "", "", ""],
        ["imgs/four.png", "reversed", "", "10", "20", "200", "110", ""],
        ["imgs/three.png", "", "", "", "", "", "", ""],
    ]
    manifest = src / "labels.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    report = importers.import_csv(manifest, dataset="m", store=store)

    reasons = {name.split(" (")[0]: reason for name, reason in report.skipped}
    assert report.imported == 3, report.format()
    assert "unknown label 'sigmoid'" in reasons["labels.csv line 4"]
    assert "x1 < x2" in reasons["labels.csv line 5"]
    assert "file not found" in reasons["labels.csv line 6"]
    assert "all of x1, y1, x2, y2" in reasons["labels.csv line 7"]
    assert "outside the 96 x 128 image" in reasons["labels.csv line 8"]
    items = {Path(i.source).name: i for i in store.current_labels("m")}
    assert items["one.png"].roi_box == [10.0, 20.0, 60.0, 110.0] and items["one.png"].split == "val"
    assert items["two.png"].curvature_class == "reversed" and items["two.png"].roi_box is None
    assert items["three.png"].curvature_class is None and items["three.png"].patient_id == "three"
    assert store.history(items["three.png"].image_id) == []


def test_csv_without_required_columns_is_refused(workspace, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,normal\n")
    with pytest.raises(DatasetError, match="missing: path, label"):
        importers.import_csv(bad)


# ---------------------------------------------------------------- YOLO and COCO


def test_yolo_set_gives_pixel_boxes_splits_and_reports_bad_labels(workspace, tmp_path, store):
    src = tmp_path / "yolo"
    write_png(src / "images" / "train" / "a.png", 1, size=(128, 96))
    write_png(src / "images" / "train" / "b.png", 2, size=(128, 96))
    write_png(src / "images" / "val" / "c.png", 3, size=(128, 96))
    write_png(src / "images" / "val" / "d.png", 4, size=(128, 96))
    (src / "labels" / "train").mkdir(parents=True)
    (src / "labels" / "val").mkdir(parents=True)
    (src / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n0 0.1 0.1 0.05 0.05\n")
    (src / "labels" / "val" / "c.txt").write_text("0 0.5 oops 0.25\n")
    (src / "labels" / "val" / "d.txt").write_text("0 0.5 0.5 1.5 0.5\n")
    (src / "data.yaml").write_text(yaml.safe_dump({"path": "/elsewhere/yolo", "train": "images/train",
                                                   "val": "images/val", "names": {0: "cervical_spine"}}))

    report = importers.import_yolo(src, dataset="y", store=store)

    assert report.imported == 2
    reasons = dict(report.skipped)
    assert "not YOLO text" in reasons["images/val/c.png"]
    assert "not normalised" in reasons["images/val/d.png"]
    items = {Path(i.source).name: i for i in store.current_labels("y")}
    # cx 0.5*128=64, w 0.25*128=32 -> x 48..80; cy 0.5*96=48, h 0.5*96=48 -> y 24..72 (largest box kept)
    assert items["a.png"].roi_box == pytest.approx([48.0, 24.0, 80.0, 72.0])
    assert items["a.png"].curvature_class is None and items["a.png"].split == "train"
    assert items["b.png"].roi_box is None


def test_coco_boxes_classes_and_keypoints(workspace, tmp_path, store):
    src = tmp_path / "coco"
    write_png(src / "images" / "a.png", 1)
    write_png(src / "images" / "b.png", 2)
    write_png(src / "images" / "c.png", 3)
    landmarks = column_landmarks(2.0)
    keypoints = [v for x, y in landmarks for v in (x, y, 2)]
    keypoints[3 * 22:3 * 22 + 3] = [0, 0, 0]  # C7 bottom right not visible
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"},
                   {"id": 3, "file_name": "c.png"}, {"id": 4, "file_name": "gone.png"}],
        "categories": [{"id": 1, "name": "Lordotic"}, {"id": 2, "name": "kyphotic"}, {"id": 3, "name": "cervical_spine"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 50, 90], "keypoints": keypoints},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20]},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 40, 60]},
            {"id": 4, "image_id": 3, "category_id": 3, "bbox": [1, 2, 30, 40]},
        ],
    }
    (src / "annotations.json").write_text(json.dumps(coco))

    report = importers.import_coco(src, dataset="c", store=store)

    assert report.imported == 3 and report.skipped == [("gone.png", "file not found")]
    items = {Path(i.source).name: i for i in store.current_labels("c")}
    assert items["a.png"].curvature_class == "normal" and items["a.png"].roi_box == [10.0, 20.0, 60.0, 110.0]
    np.testing.assert_allclose(items["a.png"].landmarks[:22], landmarks[:22])
    assert np.isnan(items["a.png"].landmarks[22]).all()
    assert items["b.png"].curvature_class == "reversed" and items["b.png"].roi_box == [5.0, 5.0, 45.0, 65.0]
    assert items["c.png"].curvature_class is None and items["c.png"].roi_box == [1.0, 2.0, 31.0, 42.0]


# ---------------------------------------------------------------- CSXA


def _csxa_folder(root: Path, sheet_format: str = "xlsx") -> dict[str, np.ndarray]:
    """Four cases laid out as CSXA: datasets-PNG/<NNNN>_<age>.png + Labelme JSON + the grade sheet."""
    import pandas as pd

    cases = {"0001_45": (1, 3.0), "0002_50": (2, 0.0), "0003_61": (3, -2.5), "0009_33": (5, -3.0)}
    marks = {}
    for seed, (stem, (_, bend)) in enumerate(cases.items()):
        write_png(root / "datasets-PNG" / f"{stem}.png", seed + 10)
        marks[stem] = column_landmarks(bend)
        write_labelme(root / "datasets-PNG" / f"{stem}.json", marks[stem], f"{stem}.png", (96, 128))
    write_png(root / "datasets-PNG" / "0004_70.png", 99)  # case 4 is not in the sheet
    header = ["Number", "Age", "Sex", "Curvature: 1.Lordotic, 2.Straight, 3.Sigmoid1, 4.Sigmoid2, 5.Kyphotic"]
    body = [[1, 44, "F", 1], [2, 50, "M", 2], [3, 61, "F", 3], [9, 33, "M", 5]]
    table = pd.DataFrame([["Cervical spine X-ray dataset", None, None, None], header, *body])
    if sheet_format == "xlsx":
        table.to_excel(root / "datasets.xlsx", sheet_name="Sheet1", header=False, index=False)
    else:
        table.to_csv(root / "datasets.csv", header=False, index=False)
    return marks


def test_csxa_import_links_sheet_by_case_number(workspace, tmp_path, store):
    src = tmp_path / "CSXA"
    marks = _csxa_folder(src)

    report = importers.import_csxa(src, dataset="csxa", store=store)

    assert report.imported == 3, report.format()
    reasons = dict(report.skipped)
    assert "sigmoid curvature (grade 3)" in reasons["datasets-PNG/0003_61.png"]
    assert "case 4 is not in datasets.xlsx" in reasons["datasets-PNG/0004_70.png"]
    items = {i.patient_id: i for i in store.current_labels("csxa")}
    assert {k: v.curvature_class for k, v in items.items()} == {"0001": "normal", "0002": "straightened",
                                                                 "0009": "reversed"}
    np.testing.assert_allclose(items["0001"].landmarks, marks["0001_45"])
    assert items["0001"].roi_box == pytest.approx(roi_box_from_landmarks(marks["0001_45"], (96, 128)))
    assert items["0001"].meta["csxa"] == {"number": 1, "curvature_grade": 1, "age": 44, "sex": "F"}


def test_csxa_sigmoid_measured_and_csv_sheet(workspace, tmp_path, store):
    src = tmp_path / "CSXA"
    marks = _csxa_folder(src, sheet_format="csv")

    report = importers.import_csxa(src, sigmoid="measure", dataset="csxa", store=store)

    assert report.imported == 4, report.format()
    sigmoid = next(i for i in store.current_labels("csxa") if i.patient_id == "0003")
    from core.data.imaging import read_image
    from core.data.measure import read_facing

    # signed with the facing read from the film (the lean flips on some real necks), as Predict signs it
    film = read_image(src / "datasets-PNG" / "0003_61.png").pixels
    facing = read_facing(film, marks["0003_61"]).facing
    assert sigmoid.curvature_class == measure_landmarks(marks["0003_61"], facing=facing).rule_class
    assert sigmoid.meta["csxa"]["class_from"] == "cobb rule"


# ---------------------------------------------------------------- DICOM


def _write_dicom(path: Path, patient_id: str, name: str, seed: int) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, patient_id, "19610412", "F"
    ds.InstitutionName, ds.ReferringPhysicianName, ds.StudyDate = "St Elsewhere Hospital", "HOUSE^GREG", "20240102"
    ds.AccessionNumber, ds.Modality = "ACC998877", "DX"
    ds.add_new(0x00091001, "LO", "private vendor note: DOE")
    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = rng.integers(0, 4096, (64, 48), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_is_deidentified_and_patients_pseudonymised(workspace, tmp_path, store):
    import pydicom

    src = tmp_path / "dicom"
    _write_dicom(src / "doe_a.dcm", "MRN-12345", "DOE^JANE", 1)
    _write_dicom(src / "doe_b.dcm", "MRN-12345", "DOE^JANE", 2)
    _write_dicom(src / "roe.dcm", "MRN-777", "ROE^RICHARD", 3)
    (src / "notes.bin").write_bytes(b"not a dicom file")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,patient_id,x1,y1,x2,y2\nx/doe_a.png,straight,SHOULD-NOT-BE-USED,5,5,40,60\n")

    calls = []
    report = importers.import_dicom(src, labels, dataset="dx", store=store,
                                   progress=lambda done, total, name: calls.append((done, total, name)))

    assert report.imported == 3 and [n for n, _ in report.skipped] == ["notes.bin"]
    # Reading and de-identifying each file is the slow part: it is inside the reported progress.
    assert calls == [(1, 4, "doe_a.dcm"), (2, 4, "doe_b.dcm"), (3, 4, "notes.bin"), (4, 4, "roe.dcm"), (4, 4, "")]
    items = {i.image_id: i for i in store.current_labels("dx")}
    stored = {}
    for item in items.values():
        ds = pydicom.dcmread(workspace / item.path)
        stored[item.image_id] = ds
        assert item.path.endswith(".dcm")
        assert str(ds.PatientName) == "" and ds.get("PatientBirthDate", "") == ""
        assert "InstitutionName" not in ds and str(ds.ReferringPhysicianName) == ""
        assert ds.get("StudyDate", "") == "" and ds.AccessionNumber == ""
        assert not any(element.tag.is_private for element in ds)
        assert ds.PatientIdentityRemoved == "YES" and "Basic" in ds.DeidentificationMethod
        assert ds.PatientID == item.patient_id and item.patient_id.startswith("anon-")
        raw = (workspace / item.path).read_bytes()
        for secret in (b"DOE", b"ROE", b"MRN-", b"19610412", b"Elsewhere", b"ACC998877", b"HOUSE"):
            assert secret not in raw
        assert ds.pixel_array.shape == (64, 48)
    per_patient = Counter(i.patient_id for i in items.values())
    assert sorted(per_patient.values()) == [1, 2]  # grouping survives: both DOE films share one pseudonym
    doe = next(p for p, n in per_patient.items() if n == 2)
    assert doe == deid.patient_pseudonym("MRN-12345")
    originals = {pydicom.dcmread(src / f).SOPInstanceUID for f in ("doe_a.dcm", "doe_b.dcm", "roe.dcm")}
    assert not originals & {ds.SOPInstanceUID for ds in stored.values()}
    labeled = [i for i in items.values() if i.curvature_class]
    assert len(labeled) == 1 and labeled[0].curvature_class == "straightened"
    assert labeled[0].roi_box == [5.0, 5.0, 40.0, 60.0] and labeled[0].patient_id != "SHOULD-NOT-BE-USED"
    database = b"".join(p.read_bytes() for p in workspace.glob("cervicurve.db*"))
    assert b"DOE" not in database and b"MRN-12345" not in database and b"doe_a" not in database

    # A later import of the same patient (a new film) lands on the same pseudonym.
    _write_dicom(tmp_path / "later" / "followup.dcm", "MRN-12345", "DOE^JANE", 4)
    later = importers.import_dicom(tmp_path / "later", dataset="dx2", store=store)
    assert later.imported == 1
    (followup,) = store.current_labels("dx2")
    assert followup.patient_id == doe
    # The same file imported twice is one image: de-identification is deterministic.
    assert importers.import_dicom(src, dataset="dx", store=store).unchanged == 3


def test_pydicom_sample_files_truncated_and_imageless_are_reported(workspace, tmp_path, store):
    import pydicom
    from pydicom.data import get_testdata_file

    src = tmp_path / "samples"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_truncated.dcm", "rtplan.dcm"):
        (src / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    original = pydicom.dcmread(src / "CT_small.dcm")
    assert str(original.PatientName) and any(element.tag.is_private for element in original)

    report = importers.import_dicom(src, dataset="samples", store=store)

    reasons = dict(report.skipped)
    assert report.imported == 1
    assert "shorter than its header says" in reasons["MR_truncated.dcm"]
    assert "no PixelData" in reasons["rtplan.dcm"]
    (item,) = store.current_labels("samples")
    stored = pydicom.dcmread(workspace / item.path)
    assert str(stored.PatientName) == "" and not any(element.tag.is_private for element in stored)
    assert str(original.PatientName).encode() not in (workspace / item.path).read_bytes()
    np.testing.assert_array_equal(stored.pixel_array, original.pixel_array)  # the image itself is untouched


# ---------------------------------------------------------------- never half-writes


def test_failure_inside_the_transaction_leaves_store_and_images_unchanged(workspace, tmp_path, store):
    from sqlalchemy import create_engine, text

    first = tmp_path / "first"
    write_png(first / "normal" / "a.png", 1)
    write_png(first / "reversed" / "b.png", 2)
    assert importers.import_folder(first, dataset="d", store=store).imported == 2
    images_before = files_under(settings.images_dir())
    rows_before = [(i.image_id, i.curvature_class) for i in store.current_labels()]

    # A real database failure on the third label row of the next import (as a full disk would cause).
    engine = create_engine(store.url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER fail_third BEFORE INSERT ON labels WHEN (SELECT count(*) FROM labels) >= 4 "
                          "BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END"))
    engine.dispose()
    second = tmp_path / "second"
    for n in range(4):
        write_png(second / "straightened" / f"s{n}.png", 10 + n)

    with pytest.raises(Exception, match="simulated disk full"):
        importers.import_folder(second, dataset="d", store=store)

    assert files_under(settings.images_dir()) == images_before
    assert [(i.image_id, i.curvature_class) for i in store.current_labels()] == rows_before
    assert len(store.images()) == 2


# ---------------------------------------------------------------- splits


def _balanced_store(store: AnnotationStore, patients_per_class: int = 10, images_per_patient: int = 2) -> None:
    n = 0
    for c, name in enumerate(("normal", "straightened", "reversed")):
        for p in range(patients_per_class):
            for _ in range(images_per_patient):
                n += 1
                image_id = store.add_image(f"images/{n}.png", sha256=f"{n:064x}", width=64, height=64,
                                           patient_id=f"{name}-{p}", source="test", dataset="bal")
                store.save_label(image_id, annotator="t", curvature_class=name)
    store.add_image("images/x.png", sha256="f" * 64, width=64, height=64, patient_id="normal-0",
                            source="test", dataset="bal")  # unlabeled image of a labeled patient


def test_patient_level_splits_have_no_overlap_and_every_class(workspace, store):
    _balanced_store(store)
    counts = datasets.make_splits("bal", (0.6, 0.2, 0.2), seed=3, store=store)

    items = store.current_labels("bal")
    split_of_patient: dict[str, set] = {}
    for item in items:
        split_of_patient.setdefault(item.patient_id, set()).add(item.split)
    assert all(len(splits) == 1 for splits in split_of_patient.values())
    for split in ("train", "val", "test"):
        classes = {i.curvature_class for i in items if i.split == split and i.curvature_class}
        assert classes == {"normal", "straightened", "reversed"}, split
    assert sum(sum(c.values()) for c in counts.values()) == len(items) == 61
    assert 8 <= sum(counts["test"].values()) <= 16  # about 20 % of 60 labeled images
    # Same seed, same splits; another seed, different ones.
    before = {i.image_id: i.split for i in items}
    datasets.make_splits("bal", (0.6, 0.2, 0.2), seed=3, store=store)
    assert {i.image_id: i.split for i in store.current_labels("bal")} == before
    datasets.make_splits("bal", (0.6, 0.2, 0.2), seed=4, store=store)
    assert {i.image_id: i.split for i in store.current_labels("bal")} != before


def test_kfold_and_training_items(workspace, store):
    _balanced_store(store, patients_per_class=6)
    datasets.make_splits("bal", (0.7, 0.0, 0.3), seed=0, store=store)
    items = {i.image_id: i for i in store.current_labels("bal")}
    folds = datasets.kfold_splits("bal", k=3, seed=0, store=store)
    pool = {i for i, item in items.items() if item.split != "test" and item.curvature_class}
    assert sorted(v for fold in folds for v in fold.val) == sorted(pool)
    for fold in folds:
        assert set(fold.train) | set(fold.val) == pool
        assert not {items[i].patient_id for i in fold.train} & {items[i].patient_id for i in fold.val}

    train = datasets.training_items("bal", "train", store=store)
    assert train and all(t.path.is_absolute() and t.path.parent.parent == settings.home() for t in train)
    assert {t.label for t in train} == {0, 1, 2}
    assert all(items[t.image_id].split == "train" and t.label == items[t.image_id].class_index for t in train)
    fold_items = datasets.training_items("bal", image_ids=folds[0].val, store=store)
    assert sorted(t.image_id for t in fold_items) == sorted(folds[0].val)


def test_too_few_patients_is_a_clear_error(workspace, store):
    for n in range(3):
        image_id = store.add_image(f"images/{n}.png", sha256=f"{n:064x}", width=8, height=8, patient_id="same",
                                   source="t", dataset="tiny")
        store.save_label(image_id, annotator="t", curvature_class="normal")
    with pytest.raises(DatasetError, match="every class needs at least 3 patients, but normal has 1"):
        datasets.make_splits("tiny", store=store)
    with pytest.raises(DatasetError, match="summing to 1"):
        datasets.make_splits("tiny", (0.5, 0.5, 0.5), store=store)
    with pytest.raises(DatasetError, match="train above 0"):
        datasets.make_splits("tiny", (0.0, 0.5, 0.5), store=store)


def _patients_per_split(store: AnnotationStore, dataset: str) -> dict[str, Counter]:
    """split -> class -> number of patients, checking on the way that no patient is in two splits."""
    split_of: dict[str, set] = {}
    for item in store.current_labels(dataset):
        split_of.setdefault(item.patient_id, set()).add(item.split)
    assert all(len(splits) == 1 for splits in split_of.values()), "a patient is in two splits"
    out: dict[str, Counter] = {name: Counter() for name in ("train", "val", "test")}
    for patient, (split,) in split_of.items():
        out[split][patient.split("-")[0]] += 1
    return out


@pytest.mark.parametrize("per_class, expected", [(4, (2, 1, 1)), (6, (4, 1, 1)), (9, (6, 2, 1))])
def test_small_sets_still_split_with_every_class_in_every_split(workspace, store, per_class, expected):
    # 6 images per class (3 patients x 2) used to stop at scikit-learn's "n_splits=7 cannot be greater ...".
    _balanced_store(store, patients_per_class=per_class)
    counts = datasets.make_splits("bal", store=store)

    patients = _patients_per_split(store, "bal")
    for split, n in zip(("train", "val", "test"), expected):
        assert patients[split] == {"normal": n, "straightened": n, "reversed": n}, split
        assert {k: v for k, v in counts[split].items() if k != "unlabeled"} == dict.fromkeys(
            ("normal", "straightened", "reversed"), 2 * n)
    (patient_split,) = {i.split for i in store.current_labels("bal") if i.patient_id == "normal-0"}
    assert counts[patient_split]["unlabeled"] == 1  # the unlabeled image follows its patient


def test_two_patients_per_class_split_in_two_but_not_three(workspace, store, capsys):
    _balanced_store(store, patients_per_class=2)
    with pytest.raises(DatasetError) as refused:
        datasets.make_splits("bal", store=store)
    message = str(refused.value)
    assert "every class needs at least 3 patients, but normal has 2, straightened has 2 and reversed has 2" in message
    assert "set the val or test fraction to 0" in message
    assert cli_main(["split", "--dataset", "bal"]) == 2  # the CLI prints the message, no traceback
    assert "normal has 2" in capsys.readouterr().out

    datasets.make_splits("bal", (0.5, 0.5, 0.0), store=store)
    patients = _patients_per_split(store, "bal")
    assert patients["train"] == patients["val"] == {"normal": 1, "straightened": 1, "reversed": 1}
    assert not patients["test"]


def test_one_short_class_is_named_with_the_counts_of_all(workspace, store):
    for name, patients in (("normal", 5), ("straightened", 4), ("reversed", 1)):
        for p in range(patients):
            sha = hashlib.sha256(f"{name}{p}".encode()).hexdigest()
            image_id = store.add_image(f"images/{name}{p}.png", sha256=sha, width=8, height=8,
                                       patient_id=f"{name}-{p}", source="t", dataset="skew")
            store.save_label(image_id, annotator="t", curvature_class=name)
    with pytest.raises(DatasetError, match=r"but reversed has 1 \(patients per class: normal 5, straightened 4, "
                                           r"reversed 1\)"):
        datasets.make_splits("skew", (0.8, 0.2, 0.0), store=store)
    with pytest.raises(DatasetError, match="k-fold .* at least 2 patients, but reversed has 1"):
        datasets.kfold_splits("skew", 3, store=store)


@pytest.mark.parametrize("per_class, folds", [(2, 2), (4, 4), (6, 5), (9, 5)])
def test_kfold_on_small_sets_uses_fewer_folds_with_every_class_in_each(workspace, store, per_class, folds):
    _balanced_store(store, patients_per_class=per_class)
    items = {i.image_id: i for i in store.current_labels("bal")}

    result = datasets.kfold_splits("bal", k=5, seed=1, store=store)

    assert len(result) == folds
    pool = sorted(i for i, item in items.items() if item.curvature_class)
    assert sorted(v for fold in result for v in fold.val) == pool
    for fold in result:
        assert not {items[i].patient_id for i in fold.train} & {items[i].patient_id for i in fold.val}
        for part in (fold.train, fold.val):
            assert {items[i].curvature_class for i in part} == {"normal", "straightened", "reversed"}


# ---------------------------------------------------------------- exports


@pytest.fixture()
def labeled_dataset(workspace, tmp_path, store):
    src = tmp_path / "src"
    for n, cls in enumerate(["normal", "straightened", "reversed", "normal"]):
        write_png(src / cls / f"p{n}.png", n, size=(96, 128))
    importers.import_folder(src, dataset="ex", store=store)
    ids = [i.image_id for i in store.images("ex")]
    for n, image_id in enumerate(ids[:3]):
        marks = column_landmarks(2.0 - n * 2, origin=(20.0 + n, 10.0))
        if n == 1:
            marks[22] = np.nan
        store.save_label(image_id, annotator="t", roi_box=roi_box_from_landmarks(marks, (96, 128)), landmarks=marks)
    store.set_splits({ids[0]: "val", ids[1]: "train", ids[2]: "train", ids[3]: "train"})
    return ids


def test_an_image_without_a_split_is_left_out_of_an_export_and_said_so(workspace, tmp_path, store):
    src = tmp_path / "src"
    write_png(src / "normal" / "p0.png", 0, size=(96, 128))
    importers.import_folder(src, dataset="nosplit", store=store)
    [image] = store.images("nosplit")
    marks = column_landmarks(2.0, origin=(20.0, 10.0))
    store.save_label(image.image_id, annotator="t", roi_box=roi_box_from_landmarks(marks, (96, 128)), landmarks=marks)
    with pytest.raises(datasets.DatasetError, match=r"skipped: no split \(python -m core split"):
        exports.export_yolo("nosplit", tmp_path / "yolo", store=store)


def test_yolo_export_lines_are_normalised_boxes_and_keypoints(workspace, tmp_path, store, labeled_dataset):
    out = tmp_path / "yolo"
    report = exports.export_yolo("ex", out, store=store)
    assert report.written == 3 and report.splits == {"val": 1, "train": 2}
    assert [reason for _, reason in report.skipped] == ["no ROI box"]
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert config["names"] == {0: "cervical_spine"} and config["val"] == "images/val"
    assert Path(config["path"]) == out.resolve()
    for item in store.current_labels("ex"):
        if item.roi_box is None:
            continue
        split = item.split or "train"
        values = [float(v) for v in (out / "labels" / split / f"{item.image_id:06d}.txt").read_text().split()]
        x1, y1, x2, y2 = item.roi_box
        assert values == pytest.approx([0, (x1 + x2) / 2 / 96, (y1 + y2) / 2 / 128, (x2 - x1) / 96, (y2 - y1) / 128],
                                       abs=1e-6)
        with Image.open(out / "images" / split / f"{item.image_id:06d}.png") as png:
            assert png.size == (96, 128) and png.mode == "L"

    pose = tmp_path / "pose"
    exports.export_yolo("ex", pose, task="landmarks", store=store)
    config = yaml.safe_load((pose / "data.yaml").read_text())
    assert config["kpt_shape"] == [23, 3]
    flip = config["flip_idx"]
    assert [flip[flip[i]] for i in range(23)] == list(range(23))
    assert LANDMARK_NAMES[flip[LANDMARK_NAMES.index("C4 top left")]] == "C4 top right" and flip[0] == 0
    item = next(i for i in store.current_labels("ex") if i.landmarks is not None and np.isnan(i.landmarks).any())
    values = [float(v) for v in (pose / "labels" / "train" / f"{item.image_id:06d}.txt").read_text().split()]
    assert len(values) == 5 + 23 * 3
    points = np.array(values[5:]).reshape(23, 3)
    np.testing.assert_allclose(points[:22, :2], item.landmarks[:22] / [96, 128], atol=1e-6)
    assert points[:22, 2].tolist() == [2] * 22 and points[22].tolist() == [0, 0, 0]

    with pytest.raises(DatasetError, match="not an empty folder"):
        exports.export_yolo("ex", out, store=store)


def test_csv_folder_and_coco_exports_read_back(workspace, tmp_path, store, labeled_dataset):
    original = {i.sha256: i for i in store.current_labels("ex")}

    exports.export_csv("ex", tmp_path / "csv", store=store)
    importers.import_csv(tmp_path / "csv" / "manifest.csv", dataset="from_csv", store=store)
    back = {i.sha256: i for i in store.current_labels("from_csv")}
    assert back.keys() == original.keys()  # files copied unchanged
    for sha, item in back.items():
        assert (item.curvature_class, item.patient_id, item.split) == (
            original[sha].curvature_class, original[sha].patient_id, original[sha].split)
        assert item.roi_box == (pytest.approx(original[sha].roi_box, abs=0.01) if original[sha].roi_box else None)

    report = exports.export_folder("ex", tmp_path / "crops", store=store)
    assert report.written == 4 and report.splits == {"normal": 2, "straightened": 1, "reversed": 1}
    for item in original.values():
        with Image.open(tmp_path / "crops" / item.curvature_class / f"{item.image_id:06d}.png") as crop:
            if item.roi_box is None:
                assert crop.size == (96, 128)
            else:
                x1, y1, x2, y2 = item.roi_box
                assert abs(crop.size[0] - (x2 - x1)) <= 2 and abs(crop.size[1] - (y2 - y1)) <= 2
    importers.import_folder(tmp_path / "crops", dataset="crops", store=store)
    assert sorted(i.patient_id for i in store.current_labels("crops")) == sorted(i.patient_id for i in original.values())

    exports.export_coco("ex", tmp_path / "coco", store=store)
    importers.import_coco(tmp_path / "coco" / "annotations.json", dataset="from_coco", store=store)
    by_patient = {i.patient_id: i for i in store.current_labels("from_coco")}
    for item in original.values():
        again = by_patient[item.patient_id]
        assert again.curvature_class == item.curvature_class and again.split == item.split
        if item.roi_box is not None:
            assert again.roi_box == pytest.approx(item.roi_box)
            np.testing.assert_allclose(again.landmarks, item.landmarks)


def test_max_side_shrinks_exported_images_and_keeps_the_labels(workspace, tmp_path, store, labeled_dataset):
    full, small = tmp_path / "full", tmp_path / "small"
    exports.export_yolo("ex", full, task="landmarks", store=store)
    report = exports.export_yolo("ex", small, task="landmarks", store=store, max_side=64)

    assert report.written == 3 and yaml.safe_load((small / "data.yaml").read_text())["max_side"] == 64
    labels = sorted((full / "labels").rglob("*.txt"))
    assert len(labels) == 3
    for label in labels:
        relative = label.relative_to(full / "labels")
        assert (small / "labels" / relative).read_text() == label.read_text()  # normalised: unchanged
        with Image.open((full / "images" / relative).with_suffix(".png")) as png:
            big = np.asarray(png, dtype=float)
        with Image.open((small / "images" / relative).with_suffix(".png")) as png:
            shrunk = np.asarray(png, dtype=float)
        assert big.shape == (128, 96) and shrunk.shape == (64, 48)
        # 96 x 128 -> 48 x 64: each pixel is the mean of a 2 x 2 block (area averaging)
        assert np.abs(shrunk - big.reshape(64, 2, 48, 2).mean(axis=(1, 3))).max() <= 1.0

    exports.export_yolo("ex", tmp_path / "never_enlarged", store=store, max_side=500)
    for png_path in (tmp_path / "never_enlarged" / "images").rglob("*.png"):
        with Image.open(png_path) as png:
            assert png.size == (96, 128)
    with pytest.raises(DatasetError, match="positive number of pixels"):
        exports.export_yolo("ex", tmp_path / "zero", store=store, max_side=0)


def test_landmark_export_cropped_to_the_roi_with_its_margin(workspace, tmp_path, store, labeled_dataset):
    # A box that does not hold its landmarks cannot give a crop with every landmark: skipped, with why.
    store.save_label(labeled_dataset[3], annotator="t", roi_box=[40.0, 60.0, 70.0, 90.0],
                     landmarks=column_landmarks(0.0, origin=(20.0, 10.0)))
    out = tmp_path / "crop"

    report = exports.export_yolo("ex", out, task="landmarks", crop="roi", store=store)

    assert report.written == 3
    assert [reason for _, reason in report.skipped if "ROI crop" in reason] == [
        # crop window 37..73 x 57..93: only the right corners at x = 50 from y = 57 to 92 (6 of 23) fall inside
        "17 landmarks lie outside the ROI crop (box + 10% margin): check the box"]
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert config["crop"] == "roi" and config["roi_margin"] == 0.1 == LANDMARK_CROP_MARGIN
    assert config["kpt_shape"] == [23, 3]
    reaches_past_the_image = 0
    for item in store.current_labels("ex"):
        if item.landmarks is None or item.image_id == labeled_dataset[3]:
            continue
        x1, y1, x2, y2 = item.roi_box
        left, top = int(np.floor(x1 - 0.1 * (x2 - x1))), int(np.floor(y1 - 0.1 * (y2 - y1)))
        right, bottom = int(np.ceil(x2 + 0.1 * (x2 - x1))), int(np.ceil(y2 + 0.1 * (y2 - y1)))
        width, height = right - left, bottom - top
        stem = f"{item.image_id:06d}"
        split = item.split or "train"
        with Image.open(out / "images" / split / f"{stem}.png") as png:
            crop = np.asarray(png)
        with Image.open(workspace / item.path) as png:
            original = np.asarray(png)
        expected = np.zeros((height, width), dtype=np.uint8)  # outside the image: black
        inner = original[max(top, 0):bottom, max(left, 0):right]
        expected[max(top, 0) - top:max(top, 0) - top + inner.shape[0],
                 max(left, 0) - left:max(left, 0) - left + inner.shape[1]] = inner
        np.testing.assert_array_equal(crop, expected)
        reaches_past_the_image += left < 0 or top < 0 or right > 96 or bottom > 128

        values = np.array((out / "labels" / split / f"{stem}.txt").read_text().split(), dtype=float)
        cx, cy, w, h = values[1:5]
        np.testing.assert_allclose([cx * width + left, cy * height + top, w * width, h * height],
                                   [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-4)
        points = values[5:].reshape(23, 3)
        visible = points[:, 2] == 2
        assert visible.tolist() == np.isfinite(item.landmarks).all(axis=1).tolist()
        np.testing.assert_allclose(points[visible, :2] * [width, height] + [left, top], item.landmarks[visible],
                                   atol=1e-4)
        assert exports.landmark_crop_window(item.roi_box) == (left, top, right, bottom)
    assert reaches_past_the_image  # the zero padding is exercised, not only plain slicing

    # The CLI gives the same labels, with images shrunk to fit 32 px.
    assert cli_main(["export", "yolo", "--dataset", "ex", "--out", str(tmp_path / "cli"), "--task", "landmarks",
                     "--crop", "roi", "--max-side", "32"]) == 0
    for label in (out / "labels").rglob("*.txt"):
        relative = label.relative_to(out / "labels")
        assert (tmp_path / "cli" / "labels" / relative).read_text() == label.read_text()
        with Image.open((tmp_path / "cli" / "images" / relative).with_suffix(".png")) as png:
            assert max(png.size) == 32
    with pytest.raises(DatasetError, match="crop='roi' is for task='landmarks'"):
        exports.export_yolo("ex", tmp_path / "detect", crop="roi", store=store)


# ---------------------------------------------------------------- CLI


def test_cli_import_split_export(workspace, tmp_path, capsys):
    src = tmp_path / "phantoms"
    rows = [["path", "label", "patient_id"]]
    for p in range(12):
        cls = ("normal", "straightened", "reversed")[p % 3]
        write_png(src / "images" / f"P{p:02d}.png", p)
        rows.append([f"images/P{p:02d}.png", cls, f"P{p:02d}"])
    rows.append(["images/none.png", "normal", "X"])
    with (src / "manifest.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    assert cli_main(["import", "csv", str(src / "manifest.csv"), "--dataset", "ph"]) == 0
    out = capsys.readouterr().out
    assert "12 imported" in out and "1 skipped" in out and "file not found" in out

    assert cli_main(["split", "--dataset", "ph", "--fractions", "0.5,0.25,0.25", "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "test" in out and "fold 2" in out

    assert cli_main(["export", "csv", "--dataset", "ph", "--out", str(tmp_path / "exp")]) == 0
    assert "exported 12 images" in capsys.readouterr().out
    assert cli_main(["export", "yolo", "--dataset", "ph", "--out", str(tmp_path / "y")]) == 2
    assert "no images to export with a box" in capsys.readouterr().out
    assert cli_main(["import", "folder", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().out


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _cli(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CERVICURVE_HOME": str(workspace)}
    env.pop("CERVICURVE_DB", None)
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_imports_a_zip_and_removes_its_extraction(workspace, tmp_path):
    images = {}
    rows = ["path,label,patient_id"]
    for p in range(3):
        write_png(tmp_path / f"P{p}.png", p)
        images[f"study/images/P{p}.png"] = (tmp_path / f"P{p}.png").read_bytes()
        rows.append(f"images/P{p}.png,{('normal', 'straight', 'kyphotic')[p]},P{p}")
    rows.append("images/none.png,normal,X")
    archive = _zip(tmp_path / "ward7.zip", {"study/manifest.csv": "\n".join(rows).encode(), **images})

    done = _cli(workspace, "import", "csv", archive)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "dataset 'ward7' from ward7.zip/study: 3 imported" in done.stdout
    assert "file not found: ward7.zip/study/images/none.png" in done.stdout
    assert "uploads" not in done.stdout  # the temporary folder is never named: it is gone
    assert list((workspace / "uploads").iterdir()) == []
    with AnnotationStore() as opened:
        items = opened.current_labels("ward7")
    assert sorted(i.source for i in items) == [f"ward7.zip/study/images/P{p}.png" for p in range(3)]
    assert sorted(i.curvature_class for i in items) == ["normal", "reversed", "straightened"]
    assert all((workspace / i.path).read_bytes() == images[i.source.removeprefix("ward7.zip/")] for i in items)

    # An archive that tries to write outside its folder is refused whole: exit 2, the reason, nothing left.
    evil = _zip(tmp_path / "evil.zip", {"ok/a.png": images["study/images/P0.png"], "../escaped.png": b"x"})
    refused = _cli(workspace, "import", "folder", evil)
    assert refused.returncode == 2 and "error: evil.zip refused:" in refused.stdout and "'..'" in refused.stdout
    assert "Traceback" not in refused.stderr
    assert list((workspace / "uploads").iterdir()) == [] and not (workspace / "escaped.png").exists()


def test_zip_import_cleans_up_when_the_import_fails(workspace, tmp_path, capsys):
    no_manifest = _zip(tmp_path / "pics.zip", {"a.png": b"\x89PNG"})
    assert cli_main(["import", "csv", str(no_manifest)]) == 2
    assert "holds no CSV manifest" in capsys.readouterr().out
    bad_columns = _zip(tmp_path / "bad.zip", {"manifest.csv": b"file,class\na.png,normal\n"})
    assert cli_main(["import", "csv", str(bad_columns)]) == 2
    assert "missing: path, label" in capsys.readouterr().out
    assert cli_main(["import", "folder", str(tmp_path / "absent.zip")]) == 2
    assert "absent.zip not found" in capsys.readouterr().out
    assert list((workspace / "uploads").iterdir()) == []


def test_archive_import_from_upload_bytes_reports_progress(workspace, tmp_path, store):
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as archive:
        for n, cls in enumerate(("normal", "straight")):
            write_png(tmp_path / f"{n}.png", n)
            archive.write(tmp_path / f"{n}.png", f"{cls}/{n}.png")
    calls = []

    report = importers.import_archive("folder", upload.getvalue(), name="ward 7.zip", store=store,
                                     progress=lambda *call: calls.append(call))

    assert report.dataset == "ward 7" and report.imported == 2 and report.source == "ward 7.zip"
    assert calls == [(1, 2, "normal/0.png"), (2, 2, "straight/1.png"), (2, 2, "")]
    assert sorted(i.source for i in store.current_labels("ward 7")) == ["ward 7.zip/normal/0.png",
                                                                         "ward 7.zip/straight/1.png"]
    assert list((workspace / "uploads").iterdir()) == []


# ---------------------------------------------------------------- the phantom layout (core.data.phantom's contract)


def test_every_phantom_layout_imports_with_agreeing_labels(workspace, tmp_path, store):
    from core.data.phantom import write_phantoms

    out = tmp_path / "phantoms"
    write_phantoms(out, patients=6, images_per_patient=1, seed=1, size=128, formats=("csxa", "yolo", "dicom"))

    manifest = importers.import_csv(out / "manifest.csv", dataset="manifest", store=store)
    csxa = importers.import_csxa(out / "csxa", dataset="csxa", sigmoid="measure", store=store)
    yolo = importers.import_yolo(out / "yolo", dataset="yolo", store=store)
    dicom = importers.import_dicom(out / "dicom", out / "manifest.csv", dataset="dicom", store=store)
    for report in (manifest, csxa, yolo, dicom):
        assert report.imported == 6 and report.skipped == [], report.format()

    truth = {i.sha256: i for i in store.current_labels("manifest")}
    for name in ("csxa", "yolo"):
        for item in store.current_labels(name):
            # Same files, same ROI: every box comes from roi_box_from_landmarks.
            assert item.roi_box == pytest.approx(truth[item.sha256].roi_box, abs=0.01 if name == "csxa" else 0.05)
    for item in store.current_labels("csxa"):
        if item.meta["csxa"]["curvature_grade"] in (1, 2, 5):
            assert item.curvature_class == truth[item.sha256].curvature_class
    by_class = Counter(i.curvature_class for i in store.current_labels("dicom"))
    assert by_class == Counter(i.curvature_class for i in truth.values())
    assert len({i.patient_id for i in store.current_labels("dicom")}) == 6


# ---------------------------------------------------------------- splits belong to patients


def _manifest(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label", "patient_id", "split"], *rows])
    return path


def test_manifest_with_a_patient_in_two_splits_is_refused_or_resplit(workspace, tmp_path, store, capsys):
    src = tmp_path / "m"
    for n in range(4):
        write_png(src / f"{n}.png", n)
    manifest = _manifest(src / "manifest.csv", [["0.png", "normal", "P1", "train"], ["1.png", "normal", "P1", "test"],
                                                ["2.png", "reversed", "P2", "val"], ["3.png", "reversed", "P3", ""]])

    with pytest.raises(DatasetError, match=r"patient 'P1' is in test and train \(train: manifest.csv line 2"):
        importers.import_csv(manifest, dataset="m", store=store)
    assert store.images() == [] and files_under(settings.images_dir()) == set()
    assert cli_main(["import", "csv", str(manifest), "--dataset", "m"]) == 2
    assert "patient 'P1' is in test and train" in capsys.readouterr().out

    report = importers.import_csv(manifest, dataset="m", store=store, resplit=True)
    assert report.imported == 4 and "splits were dropped" in report.notes[0]
    assert {i.patient_id: i.split for i in store.images("m")} == {"P1": None, "P2": "val", "P3": None}


def test_new_film_of_a_known_patient_gets_its_split_and_a_contradiction_is_refused(workspace, tmp_path, store):
    first = tmp_path / "first"
    write_png(first / "a.png", 1)
    importers.import_csv(_manifest(first / "m.csv", [["a.png", "normal", "P1", "test"]]), dataset="d", store=store)
    later = tmp_path / "later"
    write_png(later / "b.png", 2)
    write_png(later / "c.png", 3)
    report = importers.import_csv(_manifest(later / "m.csv", [["b.png", "normal", "P1", ""]]), dataset="d", store=store)
    assert report.imported == 1 and [i.split for i in store.images("d")] == ["test", "test"]
    with pytest.raises(DatasetError, match="the store has it in test"):
        importers.import_csv(_manifest(later / "m2.csv", [["c.png", "normal", "P1", "train"]]), dataset="d", store=store)
    # Folder imports carry no split: a known patient's new film still joins its split.
    write_png(tmp_path / "tree" / "normal" / "P1.png", 4)
    importers.import_folder(tmp_path / "tree", dataset="d", store=store)
    assert [i.split for i in store.images("d")] == ["test", "test", "test"]


def test_frozen_test_split_survives_resplitting_and_unsplit_images_are_not_trained(workspace, tmp_path, store, capsys,
                                                                                  caplog):
    _balanced_store(store, patients_per_class=6)
    assert cli_main(["split", "--dataset", "bal", "--freeze-test"]) == 0
    assert "test split frozen" in capsys.readouterr().out
    test_before = {i.image_id for i in store.images("bal") if i.split == "test"}
    assert cli_main(["split", "--dataset", "bal", "--seed", "7"]) == 0
    assert "frozen since" in capsys.readouterr().out
    assert {i.image_id for i in store.images("bal") if i.split == "test"} == test_before
    with pytest.raises(DatasetError, match="frozen test split"):
        importers.import_csv(_manifest(_png_dir(tmp_path), [["x.png", "normal", "NEW", "test"]]), dataset="bal",
                             store=store)

    # A new patient imported after the split: left out of training, and the trainer's log says so.
    importers.import_csv(_manifest(_png_dir(tmp_path), [["x.png", "normal", "NEW", ""]]), dataset="bal", store=store)
    assert datasets.check_splits("bal", store=store).unsplit == 1
    with caplog.at_level("WARNING", logger="cervicurve.train"):
        train = datasets.training_items("bal", "train", store=store)
    assert "NEW" not in {t.patient_id for t in train}
    assert "1 labeled images of dataset 'bal' have no split" in caplog.text


def _png_dir(tmp_path: Path) -> Path:
    write_png(tmp_path / "new" / "x.png", 77)
    return tmp_path / "new" / "m.csv"


def test_training_refuses_a_dataset_with_a_patient_in_two_splits(workspace, store):
    from sqlalchemy import create_engine, text

    _balanced_store(store, patients_per_class=3)
    datasets.make_splits("bal", store=store)
    # A database written by an older CerviCurve (or by hand) may already mix a patient's splits.
    engine = create_engine(store.url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE images SET split = CASE WHEN split = 'test' THEN 'train' ELSE 'test' END "
                          "WHERE id IN (SELECT min(id) FROM images WHERE patient_id = 'normal-0')"))
    engine.dispose()
    check = datasets.check_splits("bal", store=store)
    assert list(check.conflicts) == ["normal-0"]
    with pytest.raises(DatasetError, match="1 patients in two splits \\(normal-0 in"):
        datasets.training_items("bal", "train", store=store)
    with pytest.raises(DatasetError, match="patients in two splits"):
        datasets.training_items("bal", "test", store=store)
    datasets.make_splits("bal", store=store)  # splitting again repairs it
    assert not datasets.check_splits("bal", store=store).conflicts


def test_csxa_names_with_the_age_glued_to_the_case_number(workspace, tmp_path, store):
    import pandas as pd

    src = tmp_path / "CSXA"
    # 000149 = case 1 aged 49 (the sheet says 48: link by the number), though case 149 exists too;
    # 0002_50 the separated form; 014923 = case 149 aged 23; 000777 = case 7 (aged 77), not in the sheet.
    for seed, stem in enumerate(("000149", "0002_50", "014923", "000777")):
        write_png(src / "datasets-PNG" / f"{stem}.png", seed)
    header = ["Number", "Age", "Sex", "Curvature: 1.Lordotic, 2.Straight, 3.Sigmoid1, 4.Sigmoid2, 5.Kyphotic"]
    table = pd.DataFrame([["CSXA", None, None, None], header, [1, 48, "F", 1], [2, 50, "M", 5], [149, 23, "F", 2]])
    table.to_excel(src / "datasets.xlsx", sheet_name="Sheet1", header=False, index=False)

    report = importers.import_csxa(src, dataset="csxa", store=store)

    assert report.imported == 3, report.format()
    assert dict(report.skipped) == {"datasets-PNG/000777.png": "case 7 is not in datasets.xlsx (nor case 777)"}
    items = {i.patient_id: i.curvature_class for i in store.current_labels("csxa")}
    assert items == {"0001": "normal", "0002": "reversed", "0149": "straightened"}
