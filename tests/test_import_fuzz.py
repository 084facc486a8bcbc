"""Every importer fed corrupted manifests (hypothesis): wrong types, missing keys, nulls, huge numbers, unicode
names, paths outside the folder. It may refuse the source (DatasetError, store untouched) or skip entries;
it never raises anything else, never half-writes, and never imports a file from outside an upload.

Examples share one workspace per importer (building a store per example would dominate the run time);
each example compares the store and the images folder before and after.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from PIL import Image

from core import settings
from core.data import importers
from core.data.datasets import DatasetError
from core.data.store import AnnotationStore

# Few examples, fixed seed: about 20 s for all importers here; raise max_examples to hunt.
FUZZ = hsettings(max_examples=20, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Values that break naive code: nulls, wrong types, huge and non-finite numbers, unicode and hostile paths.
odd_text = st.sampled_from(["", " ", "a.png", "../outside/out.png", "/etc/passwd", "ünïcødé 名前.png", "x" * 300,
                            "nul\x00byte", "normal", "test", "train", "1e400", "NaN", "-0", "C4 top left"])
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | odd_text | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6) | odd_text, inner, max_size=4), max_leaves=12)


def png(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def snapshot(home: Path) -> tuple[frozenset, frozenset]:
    with AnnotationStore() as store:
        rows = frozenset((i.image_id, i.path, i.dataset, i.patient_id) for i in store.images())
    files = frozenset(p.relative_to(home).as_posix() for p in (home / "images").rglob("*") if p.is_file()) \
        if (home / "images").exists() else frozenset()
    return rows, files


def imports_safely(home: Path, run, outside_sha: str | None = None) -> None:
    before = snapshot(home)
    try:
        report = run()
    except DatasetError:
        assert snapshot(home) == before, "a refused import changed the store or the images folder"
        return
    rows, files = snapshot(home)
    assert not [f for f in files if f.endswith(".part")], "half-written file left behind"
    new = rows - before[0]
    assert len(new) == report.imported and all((home / path).is_file() for _, path, _, _ in rows)
    assert all(reason for _, reason in report.skipped)
    if outside_sha is not None:
        assert not any(outside_sha in path for _, path, dataset, _ in rows if dataset == report.dataset), \
            "an upload imported a file from outside it"
    with AnnotationStore() as store:  # what the importer wrote obeys one split per patient
        for dataset in store.datasets():
            from core.data.datasets import check_splits

            assert not check_splits(dataset, store=store).conflicts


class Source:
    """A scratch source folder with two good images, and one more image beside it (outside)."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="fuzz-"))
        self.src = self.root / "src"
        (self.src / "images").mkdir(parents=True)
        (self.root / "outside").mkdir()
        for n in range(2):
            (self.src / "images" / f"{n}.png").write_bytes(png(n))
        outside = png(99)
        (self.root / "outside" / "out.png").write_bytes(outside)
        self.outside_sha = hashlib.sha256(outside).hexdigest()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.root, ignore_errors=True)


def text_cell(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, allow_nan=True)


@FUZZ
@given(rows=st.lists(st.lists(scalars, min_size=0, max_size=9), max_size=5),
       header=st.sampled_from([["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"],
                               ["path", "label"], ["path", "label", "split", "patient_id"], ["file", "class"]]),
       upload=st.booleans())
def test_csv_manifest(workspace, rows, header, upload):
    with Source() as source:
        manifest = source.src / "manifest.csv"
        with manifest.open("w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([["images/0.png", "normal", "P1"], *[[text_cell(v) for v in row] for row in rows]])
        imports_safely(workspace, lambda: importers.import_csv(manifest, dataset="csv-up" if upload else "csv",
                                                               origin="up.zip" if upload else None),
                       source.outside_sha if upload else None)


coco_entry = st.fixed_dictionaries({}, optional={
    "id": scalars, "file_name": st.sampled_from(["0.png", "images/1.png", "../outside/out.png"]) | scalars,
    "patient_id": scalars, "split": scalars, "curvature_class": scalars})
coco_annotation = st.fixed_dictionaries({}, optional={
    "id": scalars, "image_id": st.sampled_from([1, 2]) | scalars, "category_id": st.sampled_from([1, None]) | scalars,
    "bbox": st.lists(scalars, max_size=5) | json_values, "keypoints": st.lists(scalars, max_size=70) | scalars})


@FUZZ
@given(images=st.lists(coco_entry | json_values, max_size=4), annotations=st.lists(coco_annotation | json_values, max_size=4),
       categories=st.lists(st.fixed_dictionaries({}, optional={"id": scalars, "name": scalars}) | json_values, max_size=3)
       | json_values, whole=st.none() | json_values, upload=st.booleans())
def test_coco_file(workspace, images, annotations, categories, whole, upload):
    with Source() as source:
        document = whole if whole is not None else {"images": images, "annotations": annotations,
                                                    "categories": categories}
        path = source.src / "annotations.json"
        path.write_text(json.dumps(document, allow_nan=True), encoding="utf-8", errors="surrogatepass")
        imports_safely(workspace, lambda: importers.import_coco(path, dataset="coco-up" if upload else "coco",
                                                                origin="up.zip" if upload else None),
                       source.outside_sha if upload else None)


@FUZZ
@given(config=json_values | st.fixed_dictionaries({}, optional={
           "path": scalars, "train": scalars | st.lists(scalars, max_size=3), "val": scalars,
           "names": json_values}),
       label=st.lists(st.lists(scalars, max_size=8).map(lambda vs: " ".join(text_cell(v) for v in vs)), max_size=3),
       upload=st.booleans())
def test_yolo_set(workspace, config, label, upload):
    with Source() as source:
        (source.src / "images" / "train").mkdir()
        shutil.move(source.src / "images" / "0.png", source.src / "images" / "train" / "0.png")
        (source.src / "labels" / "train").mkdir(parents=True)
        (source.src / "labels" / "train" / "0.txt").write_text("\n".join(label), encoding="utf-8", errors="surrogatepass")
        (source.src / "data.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8",
                                              errors="surrogatepass")
        imports_safely(workspace, lambda: importers.import_yolo(source.src, dataset="yolo-up" if upload else "yolo",
                                                                origin="up.zip" if upload else None),
                       source.outside_sha if upload else None)


@FUZZ
@given(cells=st.lists(st.lists(scalars, min_size=1, max_size=5), max_size=4), labelme=json_values,
       stem=st.sampled_from(["0001_45", "000145", "0002", "abc", "99999999999999999999"]))
def test_csxa_folder(workspace, cells, labelme, stem):
    with Source() as source:
        folder = source.src / "datasets-PNG"
        folder.mkdir()
        (folder / f"{stem}.png").write_bytes(png(7))
        (folder / f"{stem}.json").write_text(json.dumps(labelme, allow_nan=True), encoding="utf-8",
                                              errors="surrogatepass")
        with (source.src / "datasets.csv").open("w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
            writer = csv.writer(handle)
            writer.writerows([["CSXA"], ["Number", "Age", "Curvature: 1.Lordotic"], [1, 45, 1],
                              *[[text_cell(v) for v in row] for row in cells]])
        imports_safely(workspace, lambda: importers.import_csxa(source.src, dataset="csxa", sigmoid="measure"))


@FUZZ
@given(sidecar=json_values | st.fixed_dictionaries({}, optional={"patient_id": scalars, "roi_box": json_values,
                                                                 "shapes": json_values}),
       folder=st.sampled_from(["normal", "kyphotic", "misc", "ünï"]))
def test_folder_with_sidecars(workspace, sidecar, folder):
    with Source() as source:
        target = source.src / folder
        target.mkdir()
        (target / "a.png").write_bytes(png(11))
        (target / "a.json").write_text(json.dumps(sidecar, allow_nan=True), encoding="utf-8", errors="surrogatepass")
        imports_safely(workspace, lambda: importers.import_folder(source.src, dataset="folder"))


@FUZZ
@given(rows=st.lists(st.lists(scalars, max_size=8), max_size=4), junk=st.binary(max_size=300))
def test_dicom_folder_with_manifest(workspace, rows, junk):
    from pydicom.data import get_testdata_file

    with Source() as source:
        dicom = source.src / "dicom"
        dicom.mkdir()
        (dicom / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
        (dicom / "junk.dcm").write_bytes(junk)
        (dicom / "preamble.dcm").write_bytes(b"\0" * 128 + b"DICM" + junk)
        manifest = source.root / "labels.csv"
        with manifest.open("w", newline="", encoding="utf-8", errors="surrogatepass") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"])
            writer.writerows([[text_cell(v) for v in row] for row in rows])
        imports_safely(workspace, lambda: importers.import_dicom(dicom, manifest, dataset="dicom"))


def test_zip_of_a_corrupted_coco_file_is_reported_not_raised(workspace, tmp_path):
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("set/images/a.png", png(1))
        archive.writestr("set/annotations.json", json.dumps({
            "images": [{"id": 1, "file_name": "a.png"}, {"id": None, "file_name": None}, "oops"],
            "annotations": [{"image_id": 1, "category_id": None, "bbox": [1, "two", 3, 4]}],
            "categories": [{"id": None, "name": "normal"}]}))
    report = importers.import_archive("coco", buffer.getvalue(), name="set.zip")
    reasons = dict(report.skipped)
    assert report.imported == 0 and "bbox must be a list of numbers" in reasons["a.png"]
    assert set(reasons) == {"a.png", "images[1]", "images[2]", "categories[0]"}
    assert settings.home() == workspace and not list((workspace / "uploads").iterdir())
