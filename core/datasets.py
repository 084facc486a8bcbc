"""Import, export and split datasets of the annotation store.

Importers (class folders, CSV manifest, YOLO, COCO, CSXA, DICOM) all end in ``_commit``: every
image is read with ``core.imaging.read_image`` and every label validated *before* anything is
written; then the files are copied into the workspace by content hash
(``images/<sha256[:2]>/<sha256>.<ext>``) and the rows written in one transaction. If the
transaction fails, the files it copied are deleted again, so an import never half-writes.
Each importer takes ``progress(done, total, name)``, called as each image is checked (the slow
part: reading, DICOM de-identification, validation) and once more, ``(total, total, "")``, when the rows
are written; and ``origin``, recorded as the files' source in place of their folder (``import_archive``
passes ``<archive>.zip/...``: its extraction is deleted after the import).

Splits are grouped by patient (no patient in two splits) and stratified by class. The train/val/test
split deals each class's patients (shuffled by the seed) to the splits in proportion, at least one
patient per split, so a small set still gets every class in every split; k folds use scikit-learn's
``StratifiedGroupKFold``. A set too small for that is a ``DatasetError`` that says what is missing.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from core import settings
from core.imaging import ImageReadError, read_image, to_uint8
from core.measure import landmark_flip_index
from core.settings import CLASSES
from core.store import SPLITS, AnnotationStore, LabeledImage, validate_box, validate_class, validate_landmarks

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")
SPINE_NAME = "cervical_spine"  # the one detector class
_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm"}

# Folder and category names people use for the three classes (lower case, "_" for spaces and dashes).
CLASS_SYNONYMS: dict[str, str] = {
    **{name: "normal" for name in ("normal", "lordotic", "lordosis", "lordotic_curve", "physiological")},
    **{name: "straightened" for name in ("straightened", "straight", "straightening", "hypolordotic",
                                         "hypolordosis", "loss_of_lordosis", "flat", "flattened")},
    **{name: "reversed" for name in ("reversed", "reverse", "reversal", "kyphotic", "kyphosis", "inverted")},
}
CSXA_GRADES = {1: "normal", 2: "straightened", 5: "reversed"}  # 3 Sigmoid1, 4 Sigmoid2: not one of the three
CSXA_CURVATURE_HEADER = "curvature"  # the column is headed "Curvature: 1.Lordotic, 2.Straight, ..."
# A landmark export cropped to the ROI widens the box by this fraction of its width/height on each side,
# so a detector box that is a little off still holds every landmark (the ROI box of
# ``roi_box_from_landmarks`` already leaves 12 % around C2-C7).
LANDMARK_CROP_MARGIN = 0.1

ProgressCallback = Callable[[int, int, str], None]  # (done, total, name of the image just checked)


class DatasetError(ValueError):
    """A source or request that cannot be used as a whole (missing folder, unreadable sheet, too few patients)."""


@dataclass
class ImportReport:
    dataset: str
    source: str
    imported: int = 0  # new images
    updated: int = 0  # images already in the dataset whose label changed
    unchanged: int = 0  # images already in the dataset with the same label
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def format(self) -> str:
        lines = [f"dataset {self.dataset!r} from {self.source}: {self.imported} imported, "
                 f"{self.updated} updated, {self.unchanged} already present, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class ExportReport:
    out: Path
    written: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)

    def format(self) -> str:
        parts = ", ".join(f"{name} {n}" for name, n in self.splits.items())
        lines = [f"exported {self.written} images to {self.out}" + (f" ({parts})" if parts else "")
                 + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


@dataclass
class TrainingItem:
    path: Path  # absolute
    label: int  # index into CLASSES
    roi_box: list[float] | None
    landmarks: np.ndarray | None
    patient_id: str
    image_id: int


@dataclass
class Fold:
    train: list[int]  # image ids
    val: list[int]


@dataclass
class _Candidate:
    """One image an importer found, with what it says about it; validated by ``_commit``."""

    file: Path
    name: str  # for reports: path relative to the import source
    patient_id: str
    curvature_class: str | None = None
    roi_box: list[float] | None = None
    landmarks: np.ndarray | None = None
    box_from_landmarks: bool = False  # CSXA: the ROI comes from the landmarks once the size is known
    split: str | None = None
    meta: dict = field(default_factory=dict)
    data: bytes | None = None  # stored instead of the file's bytes (the de-identified DICOM)
    suffix: str | None = None
    source: str | None = None
    normalised: bool = False  # YOLO: roi_box is [cx, cy, w, h] and landmarks fractions of the image size
    prepare: Callable[[], None] | None = None  # slow per-file work run while checking (DICOM de-identification)


@dataclass
class _Ready:
    candidate: _Candidate
    sha256: str
    width: int
    height: int
    suffix: str


def parse_class(name: Any) -> str | None:
    """A class name or synonym (``lordotic``, ``Straight``, ``kyphotic``...) -> a name in CLASSES, else None."""
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return CLASS_SYNONYMS.get(key)


# ---------------------------------------------------------------- the one write path


def _commit(candidates: list[_Candidate], report: ImportReport, store: AnnotationStore, annotator: str,
            progress: ProgressCallback | None = None) -> ImportReport:
    ready: list[_Ready] = []
    seen: dict[str, str] = {}
    for done, cand in enumerate(candidates, start=1):
        try:
            ready.append(_checked(cand, seen))
        except ValueError as error:  # ImageReadError included: the file is skipped with the reason
            report.skipped.append((cand.name, str(error)))
        if progress is not None:
            progress(done, len(candidates), cand.name)

    created_files: list[Path] = []
    created_dirs: list[Path] = []
    home = settings.home()
    try:
        stored_paths = [_store_file(item, created_files, created_dirs) for item in ready]
        with store.batch() as batch:
            for item, stored in zip(ready, stored_paths):
                cand = item.candidate
                existing = batch.find_image(report.dataset, item.sha256)
                image_id = batch.add_image(
                    stored.relative_to(home).as_posix(), sha256=item.sha256, width=item.width, height=item.height,
                    patient_id=cand.patient_id, source=cand.source or str(cand.file), dataset=report.dataset,
                    meta=cand.meta,
                )
                has_label = any(v is not None for v in (cand.curvature_class, cand.roi_box, cand.landmarks))
                changed = has_label and not _same_label(batch.current(image_id), cand)
                if changed:
                    batch.save_label(image_id, annotator=annotator, curvature_class=cand.curvature_class,
                                     roi_box=cand.roi_box, landmarks=cand.landmarks)
                if cand.split is not None:
                    batch.set_splits({image_id: cand.split})
                if existing is None:
                    report.imported += 1
                elif changed:
                    report.updated += 1
                else:
                    report.unchanged += 1
    except BaseException:
        # Nothing was committed: take back the files this import added to the images folder.
        for path in created_files:
            path.unlink(missing_ok=True)
        for folder in reversed(created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    if progress is not None:
        progress(len(candidates), len(candidates), "")
    return report


def _checked(cand: _Candidate, seen: dict[str, str]) -> _Ready:
    """Read and validate one candidate; ValueError with the reason when it cannot be imported."""
    if cand.prepare is not None:
        cand.prepare()
    try:
        data = cand.data if cand.data is not None else cand.file.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the file ({error.strerror or error})") from None
    sha = hashlib.sha256(data).hexdigest()
    if sha in seen:
        raise ValueError(f"same image as {seen[sha]}")
    radiograph = read_image(data, name=cand.file.name)
    width, height = (int(v) for v in radiograph.original_size)
    _validate_candidate(cand, width, height)
    seen[sha] = cand.name
    # The stored name says what the content is, whatever the original extension claimed.
    suffix = cand.suffix or _FORMAT_SUFFIX.get(radiograph.meta.get("format"), cand.file.suffix.lower() or ".img")
    return _Ready(cand, sha, width, height, suffix)


def _validate_candidate(cand: _Candidate, width: int, height: int) -> None:
    if cand.normalised:
        _denormalise(cand, width, height)
    if cand.curvature_class is not None:
        validate_class(cand.curvature_class)
    if cand.landmarks is not None:
        cand.landmarks = validate_landmarks(cand.landmarks)
        if np.isnan(cand.landmarks).all():
            cand.landmarks = None
    if cand.box_from_landmarks and cand.roi_box is None and cand.landmarks is not None:
        from core.measure import LandmarkError, roi_box_from_landmarks

        try:
            cand.roi_box = roi_box_from_landmarks(cand.landmarks, (width, height))
        except LandmarkError as error:
            raise ValueError(f"no ROI box from the landmarks: {error}") from None
    if cand.roi_box is not None:
        box = validate_box(cand.roi_box)
        tolerance = 1.0
        if box[0] < -tolerance or box[1] < -tolerance or box[2] > width + tolerance or box[3] > height + tolerance:
            raise ValueError(f"box {[round(v, 1) for v in box]} lies outside the {width} x {height} image")
        cand.roi_box = box
    if cand.split is not None and cand.split not in SPLITS:
        raise ValueError(f"unknown split {cand.split!r}; expected one of {', '.join(SPLITS)}")


def _store_file(item: _Ready, created_files: list[Path], created_dirs: list[Path]) -> Path:
    folder = settings.images_dir() / item.sha256[:2]
    dest = folder / f"{item.sha256}{item.suffix}"
    if dest.exists():
        return dest
    if not folder.exists():
        folder.mkdir(parents=True)
        created_dirs.append(folder)
    data = item.candidate.data if item.candidate.data is not None else item.candidate.file.read_bytes()
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise DatasetError(f"{item.candidate.name} changed while it was being imported; import again")
    partial = dest.with_name(dest.name + ".part")
    created_files.append(partial)
    partial.write_bytes(data)
    os.replace(partial, dest)  # a reader never sees half a file under the final name
    created_files.append(dest)
    return dest


def _same_label(current, cand: _Candidate) -> bool:
    if current is None:
        return False
    if cand.curvature_class is not None and cand.curvature_class != current.curvature_class:
        return False
    if cand.roi_box is not None and (current.roi_box is None or not np.allclose(cand.roi_box, current.roi_box)):
        return False
    if cand.landmarks is not None and (
        current.landmarks is None or not np.allclose(cand.landmarks, current.landmarks, equal_nan=True)
    ):
        return False
    return True


def _run_import(candidates: list[_Candidate], skipped: list[tuple[str, str]], *, source: Path, kind: str,
                dataset: str | None, store: AnnotationStore | None, annotator: str | None,
                progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    report = ImportReport(dataset=dataset or _default_dataset(source), source=origin or str(source),
                          skipped=list(skipped))
    if origin:
        # A temporary extraction is gone after the import: record where the files came from instead.
        root = source if source.is_dir() else source.parent
        for cand in candidates:
            if cand.source is None:
                cand.source = f"{origin}/{_relative_name(cand.file, root)}"
    own_store = store is None
    store = store or AnnotationStore()
    try:
        return _commit(candidates, report, store, annotator or f"import:{kind}", progress)
    finally:
        if own_store:
            store.close()


def _default_dataset(source: Path) -> str:
    folder = source if source.is_dir() else source.parent
    return folder.name or "default"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- importers


def import_folder(src: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
                  annotator: str | None = None,
                  progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A class-per-folder tree: ``SRC/<class>/**/<image>`` with class names or synonyms as folder names.

    A JSON sidecar ``<image stem>.json`` may give ``patient_id`` (else the file stem is the patient) and,
    when it is a Labelme file, the 23 landmarks.
    """
    src = _require_dir(Path(src), "class folder tree")
    candidates, skipped = [], []
    for path in _image_files(src):
        name = _relative_name(path, src)
        folders = path.relative_to(src).parts[:-1]
        curvature_class = next((parse_class(f) for f in reversed(folders) if parse_class(f)), None)
        if curvature_class is None:
            skipped.append((name, "not inside a class folder (normal, straightened, reversed or a synonym "
                                  "such as lordotic, straight, kyphotic)"))
            continue
        cand = _Candidate(file=path, name=name, patient_id=path.stem, curvature_class=curvature_class)
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            try:
                _apply_sidecar(cand, sidecar)
            except ValueError as error:
                skipped.append((name, str(error)))
                continue
        candidates.append(cand)
    return _run_import(candidates, skipped, source=src, kind="folder", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _apply_sidecar(cand: _Candidate, sidecar: Path) -> None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sidecar {sidecar.name} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {sidecar.name} must hold a JSON object")
    if str(data.get("patient_id") or "").strip():
        cand.patient_id = str(data["patient_id"]).strip()
    if data.get("roi_box") is not None:
        cand.roi_box = data["roi_box"]
    if "shapes" in data:
        from core.measure import read_labelme

        cand.landmarks = read_labelme(sidecar).landmarks


def _read_manifest(csv_path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows of a ``path,label,patient_id[,x1,y1,x2,y2][,split]`` manifest, each checked; bad rows come back as skips."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip().lower() for h in reader.fieldnames or []]
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the manifest {csv_path}: {error}") from None
    missing = [col for col in ("path", "label") if col not in header]
    if missing:
        raise DatasetError(f"{csv_path.name} needs the columns path,label[,patient_id,x1,y1,x2,y2]; "
                           f"missing: {', '.join(missing)}")
    rows, skipped = [], []
    for number, raw in enumerate(raw_rows, start=2):  # line numbers as a spreadsheet shows them
        row = {str(k).strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{csv_path.name} line {number} ({row.get('path') or 'no path'})"
        if not row.get("path"):
            skipped.append((where, "no path"))
            continue
        label = row.get("label", "")
        curvature_class = parse_class(label) if label else None
        if label and curvature_class is None:
            skipped.append((where, f"unknown label {label!r}; expected one of {', '.join(CLASSES)}"))
            continue
        coords = [row.get(k, "") for k in ("x1", "y1", "x2", "y2")]
        box = None
        if any(coords):
            if not all(coords):
                skipped.append((where, "a box needs all of x1, y1, x2, y2"))
                continue
            try:
                box = validate_box(coords)
            except ValueError as error:
                skipped.append((where, str(error)))
                continue
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            skipped.append((where, f"unknown split {split!r}; expected one of {', '.join(SPLITS)}"))
            continue
        rows.append({"where": where, "path": row["path"], "class": curvature_class, "box": box,
                     "patient_id": row.get("patient_id") or None, "split": split})
    return rows, skipped


def import_csv(csv_path: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
               annotator: str | None = None,
               progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A manifest ``path,label,patient_id[,x1,y1,x2,y2][,split]``; paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"manifest {csv_path} not found")
    rows, skipped = _read_manifest(csv_path)
    candidates = []
    for row in rows:
        path = Path(row["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        if not path.is_file():
            skipped.append((row["where"], f"file not found: {path}"))
            continue
        candidates.append(_Candidate(file=path, name=row["where"], patient_id=row["patient_id"] or path.stem,
                                     curvature_class=row["class"], roi_box=row["box"], split=row["split"]))
    return _run_import(candidates, skipped, source=csv_path, kind="csv", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _yolo_label_path(image: Path) -> Path:
    # Ultralytics' rule: the last "images" folder in the path becomes "labels".
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def import_yolo(src: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
                annotator: str | None = None,
                progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A YOLO detection (or pose) set: ``data.yaml`` + ``images/<split>`` + ``labels/<split>``.

    Gives the ROI box (the largest box when a file holds several) and, for a 23-keypoint pose set, the
    landmarks. When the set's class names are curvature classes, the class too. YOLO has no patient
    field: the file stem is the patient.
    """
    import yaml

    src = Path(src)
    yaml_path = src if src.is_file() else src / "data.yaml"
    if not yaml_path.is_file():
        raise DatasetError(f"no data.yaml in {src}")
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read {yaml_path}: {error}") from None
    root = yaml_path.parent
    base = Path(str(config.get("path") or root))
    base = base if base.is_absolute() else root / base
    if not base.is_dir():
        base = root  # a set moved from another machine
    names = config.get("names") or {}
    names = dict(enumerate(names)) if isinstance(names, list) else {int(k): v for k, v in names.items()}

    images: dict[Path, str | None] = {}
    for split in ("train", "val", "test"):
        entries = config.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            where = base / str(entry)
            files = _image_files(where) if where.is_dir() else (
                [base / line.strip() for line in where.read_text().splitlines() if line.strip()] if where.is_file() else [])
            for path in files:
                images.setdefault(path.resolve(), split)
    if not images:
        images = {path.resolve(): None for path in _image_files(base / "images")}
    candidates, skipped = [], []
    for path, split in sorted(images.items()):
        name = _relative_name(path, base.resolve())
        cand = _Candidate(file=path, name=name, patient_id=path.stem, split=split)
        label_file = _yolo_label_path(path)
        try:
            lines = [line.split() for line in label_file.read_text().splitlines() if line.strip()] \
                if label_file.is_file() else []
            objects = [[float(v) for v in line] for line in lines]
        except (OSError, ValueError) as error:
            skipped.append((name, f"label file {label_file.name} is not YOLO text ({error})"))
            continue
        if objects:
            bad = [obj for obj in objects if len(obj) < 5]
            if bad:
                skipped.append((name, f"{label_file.name}: a YOLO line is 'class cx cy w h', got {len(bad[0])} values"))
                continue
            obj = max(objects, key=lambda o: o[3] * o[4])
            cand.meta["yolo"] = {"boxes_in_file": len(objects), "class_id": int(obj[0])}
            cand.curvature_class = parse_class(names.get(int(obj[0]), ""))
            cand.roi_box = list(obj[1:5])  # normalised: made pixels by _validate_candidate once the size is known
            cand.normalised = True
            keypoints = obj[5:]
            if len(keypoints) in (23 * 3, 23 * 2):
                step = len(keypoints) // 23
                points = np.array(keypoints, dtype=float).reshape(23, step)
                if step == 3:
                    points[points[:, 2] <= 0, :2] = np.nan
                cand.landmarks = points[:, :2]  # normalised too
            elif keypoints:
                skipped.append((name, f"{label_file.name}: {len(keypoints)} keypoint values; expected 23 x 3"))
                continue
        candidates.append(cand)
    return _run_import(candidates, skipped, source=yaml_path.parent, kind="yolo", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _denormalise(cand: _Candidate, width: int, height: int) -> None:
    """YOLO coordinates are fractions of the image size: turn them into pixels."""
    cand.normalised = False
    if cand.roi_box is None:
        return
    cx, cy, w, h = cand.roi_box
    if not all(0.0 <= v <= 1.0 + 1e-6 for v in (cx, cy, w, h)):
        raise ValueError(f"YOLO box {cand.roi_box} is not normalised to 0..1")
    cand.roi_box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    if cand.landmarks is not None:
        cand.landmarks = np.asarray(cand.landmarks, dtype=float) * np.array([width, height])


def import_coco(src: str | Path, labels: str | Path | None = None, *, dataset: str | None = None,
                store: AnnotationStore | None = None, annotator: str | None = None,
                progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A COCO detection (or keypoint) file: boxes, class from the category name, landmarks from 23 keypoints.

    ``src`` is the annotation JSON, or the images folder with ``labels`` naming the JSON. An image with
    several annotations keeps the largest box.
    """
    src = Path(src)
    if src.is_file():
        json_path, image_root = src, src.parent
    else:
        image_root = _require_dir(src, "COCO image folder")
        json_path = Path(labels) if labels else next(
            (p for p in (src / "annotations.json", *sorted(src.glob("*.json")), *sorted(src.glob("annotations/*.json")))
             if p.is_file()), None)
        if json_path is None:
            raise DatasetError(f"no COCO annotation JSON in {src}; pass it with --labels")
    try:
        coco = json.loads(Path(json_path).read_text(encoding="utf-8"))
        images, annotations = coco["images"], coco.get("annotations", [])
        categories = {int(c["id"]): str(c.get("name", "")) for c in coco.get("categories", [])}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{json_path} is not a COCO annotation file ({error})") from None

    by_image: dict[Any, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    candidates, skipped = [], []
    for entry in images:
        file_name = str(entry.get("file_name", ""))
        path = next((p for p in (image_root / file_name, image_root / "images" / file_name) if p.is_file()), None)
        if path is None:
            skipped.append((file_name or f"image id {entry.get('id')}", "file not found"))
            continue
        # patient_id, split and curvature_class on an image entry are CerviCurve's additions (COCO has no
        # image-level label); other COCO files simply lack them.
        cand = _Candidate(file=path, name=file_name, patient_id=str(entry.get("patient_id") or path.stem),
                          split=entry.get("split") if entry.get("split") in SPLITS else None,
                          curvature_class=parse_class(entry.get("curvature_class") or ""))
        anns = [a for a in by_image.get(entry.get("id"), []) if a.get("bbox")]
        if anns:
            ann = max(anns, key=lambda a: float(a["bbox"][2]) * float(a["bbox"][3]))
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (TypeError, ValueError):
                skipped.append((file_name, f"bbox {ann['bbox']!r} is not [x, y, width, height]"))
                continue
            cand.roi_box = [x, y, x + w, y + h]
            cand.curvature_class = parse_class(categories.get(int(ann.get("category_id", -1)), "")) or cand.curvature_class
            keypoints = ann.get("keypoints") or []
            if len(keypoints) == 23 * 3:
                points = np.array(keypoints, dtype=float).reshape(23, 3)
                points[points[:, 2] <= 0, :2] = np.nan
                cand.landmarks = points[:, :2]
            cand.meta["coco"] = {"annotations": len(anns), "category": categories.get(int(ann.get("category_id", -1)))}
        candidates.append(cand)
    return _run_import(candidates, skipped, source=Path(json_path), kind="coco", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _read_csxa_sheet(path: Path) -> dict[int, dict]:
    """Case number -> {grade, age, sex} from ``datasets.xlsx`` (Sheet1) or the same as CSV.

    The header row is found by its ``Number`` cell (CSXA puts a title row above it).
    """
    import pandas as pd

    try:
        if path.suffix.lower() in (".xlsx", ".xlsm", ".xls"):
            sheets = pd.read_excel(path, sheet_name=None, header=None, dtype=object)
            table = sheets.get("Sheet1", next(iter(sheets.values())))
        else:
            table = pd.read_csv(path, header=None, dtype=object, encoding="utf-8-sig")
    except Exception as error:  # pandas/openpyxl raise many types for a broken sheet
        raise DatasetError(f"cannot read the CSXA sheet {path}: {error}") from None
    header_row = next((i for i in range(min(len(table), 10))
                       if any(str(v).strip().lower() == "number" for v in table.iloc[i].tolist())), None)
    if header_row is None:
        raise DatasetError(f"{path.name}: no header row with a 'Number' column in its first 10 rows")
    header = [str(v).strip() for v in table.iloc[header_row].tolist()]
    number_col = next(i for i, h in enumerate(header) if h.lower() == "number")
    curve_col = next((i for i, h in enumerate(header) if h.lower().startswith(CSXA_CURVATURE_HEADER)), None)
    if curve_col is None:
        raise DatasetError(f"{path.name}: no column headed 'Curvature: 1.Lordotic, 2.Straight, ...'")
    extra = {key: next((i for i, h in enumerate(header) if h.lower().startswith(key)), None) for key in ("age", "sex")}
    cases = {}
    for values in table.iloc[header_row + 1:].itertuples(index=False):
        number, grade = _as_int(values[number_col]), _as_int(values[curve_col])
        if number is None:
            continue
        cases[number] = {"grade": grade, **{k: _plain(values[i]) for k, i in extra.items() if i is not None}}
    return cases


def _as_int(value: Any) -> int | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def import_csxa(src: str | Path, sheet: str | Path | None = None, *, sigmoid: str = "skip",
                dataset: str | None = None, store: AnnotationStore | None = None,
                annotator: str | None = None,
                progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """The CSXA layout: images (``datasets-PNG/`` or anywhere under ``src``), Labelme JSON with the same
    stem, and ``datasets.xlsx``/``.csv`` with the curvature grade per case number.

    Grades 1/2/5 -> normal/straightened/reversed. Sigmoid grades 3 and 4 are skipped, or with
    ``sigmoid="measure"`` classed by the Cobb rule on their landmarks. The ROI box comes from the
    landmarks; the patient is the case number.
    """
    from core.measure import LandmarkError, measure_landmarks, read_labelme

    if sigmoid not in ("skip", "measure"):
        raise DatasetError(f"sigmoid must be 'skip' or 'measure', got {sigmoid!r}")
    src = _require_dir(Path(src), "CSXA folder")
    if sheet is None:
        found = [p for name in ("datasets.xlsx", "datasets.csv") for p in sorted(src.rglob(name))]
        if not found:
            raise DatasetError(f"no datasets.xlsx or datasets.csv under {src}; pass the sheet with --labels")
        sheet = found[0]
    cases = _read_csxa_sheet(Path(sheet))
    image_dir = next((p for p in [src / "datasets-PNG", *sorted(src.rglob("datasets-PNG"))] if p.is_dir()), src)
    labelme = {}
    for json_path in sorted(src.rglob("*.json")):
        labelme.setdefault(json_path.stem, json_path)

    candidates, skipped = [], []
    for path in _image_files(image_dir):
        name = _relative_name(path, src)
        match = re.match(r"\d+", path.stem)
        if match is None:
            skipped.append((name, "file name does not start with a case number"))
            continue
        number = int(match.group())
        case = cases.get(number)
        if case is None:
            skipped.append((name, f"case {number} is not in {Path(sheet).name}"))
            continue
        json_path = path.with_suffix(".json") if path.with_suffix(".json").is_file() else labelme.get(path.stem)
        landmarks = None
        if json_path is not None:
            try:
                landmarks = read_labelme(json_path).landmarks
            except LandmarkError as error:
                skipped.append((name, str(error)))
                continue
        grade = case["grade"]
        meta = {"csxa": {"number": number, "curvature_grade": grade,
                         **{k: case[k] for k in ("age", "sex") if case.get(k) is not None}}}
        if grade in CSXA_GRADES:
            curvature_class = CSXA_GRADES[grade]
        elif grade in (3, 4) and sigmoid == "skip":
            skipped.append((name, f"sigmoid curvature (grade {grade}) is not one of the three classes; "
                                  "import with sigmoid='measure' to class it by its Cobb angle"))
            continue
        elif grade in (3, 4):
            if landmarks is None:
                skipped.append((name, f"sigmoid curvature (grade {grade}) needs landmarks to be measured; none found"))
                continue
            try:
                curvature_class = measure_landmarks(landmarks).rule_class
            except LandmarkError as error:
                skipped.append((name, f"sigmoid curvature (grade {grade}) cannot be measured: {error}"))
                continue
            meta["csxa"]["class_from"] = "cobb rule"
        else:
            skipped.append((name, f"curvature grade {grade!r} in the sheet is not 1-5"))
            continue
        candidates.append(_Candidate(file=path, name=name, patient_id=f"{number:04d}", curvature_class=curvature_class,
                                     landmarks=landmarks, box_from_landmarks=True, meta=meta))
    return _run_import(candidates, skipped, source=src, kind="csxa", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


# ---------------------------------------------------------------- DICOM with de-identification

# DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile (the identifying attributes of
# Table E.1-1 a cervical radiograph carries). Person names (VR PN) and all dates and times are blanked
# wherever they occur; these are removed; instance UIDs are replaced.
_REMOVE_KEYWORDS = frozenset("""
    OtherPatientIDs OtherPatientIDsSequence OtherPatientNames PatientAddress PatientTelephoneNumbers
    PatientAge PatientSize PatientWeight PatientBirthName PatientMotherBirthName PatientBirthTime
    EthnicGroup Occupation MilitaryRank BranchOfService MedicalRecordLocator PatientReligiousPreference
    AdditionalPatientHistory PatientComments CountryOfResidence RegionOfResidence IssuerOfPatientID
    PatientInsurancePlanCodeSequence MedicalAlerts Allergies SmokingStatus PregnancyStatus LastMenstrualDate
    PatientState ResponsibleOrganization InstitutionName InstitutionAddress InstitutionalDepartmentName
    InstitutionCodeSequence StationName DeviceSerialNumber ReferringPhysicianAddress
    ReferringPhysicianTelephoneNumbers RequestingService RequestAttributesSequence ReferencedPatientSequence
    ReferencedStudySequence ReferencedPerformedProcedureStepSequence PerformedProcedureStepID
    PerformedProcedureStepDescription ScheduledProcedureStepID RequestedProcedureID RequestedProcedureDescription
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence StudyDescription SeriesDescription ImageComments
    ProtocolName DerivationDescription AcquisitionComments FrameComments ReasonForStudy
    ReasonForTheRequestedProcedure ContentCreatorName PersonIdentificationCodeSequence
    OperatorIdentificationSequence PerformingPhysicianIdentificationSequence
    PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence
    ReferringPhysicianIdentificationSequence
""".split())
_BLANK_KEYWORDS = frozenset("PatientName PatientBirthDate PatientSex AccessionNumber StudyID".split())
_REPLACE_UID_KEYWORDS = frozenset("""
    StudyInstanceUID SeriesInstanceUID SOPInstanceUID ReferencedSOPInstanceUID FrameOfReferenceUID
    SynchronizationFrameOfReferenceUID IrradiationEventUID DeviceUID ConcatenationUID DimensionOrganizationUID
    StorageMediaFileSetUID MediaStorageSOPInstanceUID
""".split())
# LO allows 64 characters; the code sequence names the profile in full (DCM 113100).
DEIDENTIFICATION_METHOD = "CerviCurve PS3.15 Basic Profile; salted pseudonym PatientID"


def patient_pseudonym(patient_id: str, salt: bytes | None = None) -> str:
    """A stable, salted stand-in for a DICOM PatientID: same patient -> same pseudonym in this workspace."""
    salt = settings.pseudonym_salt() if salt is None else salt
    return "anon-" + hmac.new(salt, str(patient_id).strip().encode(), hashlib.sha256).hexdigest()[:16]


def deidentify(ds, salt: bytes | None = None) -> str:
    """De-identify a pydicom Dataset in place; returns the patient pseudonym it now carries."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    salt = settings.pseudonym_salt() if salt is None else salt
    original_id = str(ds.get("PatientID", "") or "").strip()
    key = original_id or str(ds.get("StudyInstanceUID", "") or "") or str(ds.get("SOPInstanceUID", ""))
    pseudonym = patient_pseudonym(key, salt)

    def new_uid(value: Any) -> Any:
        # Deterministic, so re-importing a file yields the same de-identified bytes (and one stored image).
        if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
            return [generate_uid(entropy_srcs=[salt.decode(), str(v)]) for v in value]
        return generate_uid(entropy_srcs=[salt.decode(), str(value)]) if value else value

    def scrub(dataset, element) -> None:
        keyword = element.keyword
        if keyword in _REMOVE_KEYWORDS or (element.tag.group & 0xFF00) in (0x5000, 0x6000):  # curves, overlays
            del dataset[element.tag]
        elif keyword in _REPLACE_UID_KEYWORDS:
            element.value = new_uid(element.value)
        elif keyword in _BLANK_KEYWORDS or element.VR in ("PN", "DA", "DT", "TM"):
            element.value = [] if element.VR == "SQ" else ""

    ds.remove_private_tags()
    ds.walk(scrub)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    return pseudonym


def import_dicom(src: str | Path, labels: str | Path | None = None, *, dataset: str | None = None,
                 store: AnnotationStore | None = None, annotator: str | None = None,
                 progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A folder of DICOM files, de-identified on import (the workspace only ever holds the de-identified copy).

    ``labels`` is an optional manifest (``path,label[,x1,y1,x2,y2]``) matched by relative path or file stem;
    its patient ids are ignored: the patient is the salted pseudonym of the DICOM PatientID.
    """
    src = _require_dir(Path(src), "DICOM folder")
    salt = settings.pseudonym_salt()
    by_key: dict[str, dict] = {}
    skipped: list[tuple[str, str]] = []
    if labels is not None:
        rows, skipped = _read_manifest(Path(labels))
        for row in rows:
            by_key.setdefault(Path(row["path"]).as_posix(), row)
            by_key.setdefault(Path(row["path"]).stem, row)
    candidates = []
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() not in (".json", ".csv", ".txt", ".yaml", ".xlsx", ".md"))
    for path in files:
        name = _relative_name(path, src)
        row = by_key.get(name) or by_key.get(path.stem) or {}
        # The original file name may carry a name or a date: the store keeps a pseudonymous source.
        source = "dicom:" + hmac.new(salt, name.encode(), hashlib.sha256).hexdigest()[:16]
        cand = _Candidate(file=path, name=name, patient_id="", curvature_class=row.get("class"),
                          roi_box=row.get("box"), split=row.get("split"), suffix=".dcm", source=source,
                          meta={"deidentified": True})
        # Reading and de-identifying is the slow part: it runs while _commit checks (and reports progress).
        cand.prepare = lambda cand=cand: _deidentified_copy(cand, salt)
        candidates.append(cand)
    return _run_import(candidates, skipped, source=src, kind="dicom", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _deidentified_copy(cand: _Candidate, salt: bytes) -> None:
    """Read ``cand.file`` as DICOM and put its de-identified bytes and patient pseudonym on ``cand``;
    ValueError with the reason for a file that cannot or must not be stored."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = cand.file
    try:
        # A .dcm without the 128-byte preamble is still DICOM; anything else must carry the marker.
        ds = pydicom.dcmread(path, force=path.suffix.lower() in (".dcm", ".dicom"))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a readable DICOM file ({error})") from None
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        raise ValueError("BurnedInAnnotation is YES: the pixels may show who the patient is; "
                         "remove the annotation before importing")
    if "PixelData" not in ds:
        raise ValueError("no image in this DICOM file (no PixelData)")
    buffer = io.BytesIO()
    try:
        pseudonym = deidentify(ds, salt)
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as error:  # pydicom raises several types for a dataset it cannot encode
        raise ValueError(f"cannot write the de-identified copy ({error})") from None
    cand.data, cand.patient_id = buffer.getvalue(), pseudonym


# ---------------------------------------------------------------- exports


def _export_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} is not an empty folder; export into a new one so no stale files mix in")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _labeled_images(dataset: str, store: AnnotationStore | None) -> list[LabeledImage]:
    own = store is None
    store = store or AnnotationStore()
    try:
        items = store.current_labels(dataset)
    finally:
        if own:
            store.close()
    if not items:
        raise DatasetError(f"dataset {dataset!r} has no images")
    return items


def _stem(item: LabeledImage) -> str:
    return f"{item.image_id:06d}"


def _absolute(item: LabeledImage) -> Path:
    return settings.home() / item.path


def _write_png(pixels: np.ndarray, path: Path, max_side: int | None = None) -> None:
    """8-bit grayscale PNG; with ``max_side``, shrunk (area averaging, as ultralytics itself shrinks) to fit it."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(to_uint8(pixels), mode="L")
    scale = 1.0 if max_side is None else int(max_side) / max(image.size)
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BOX)
    image.save(path)


def yolo_line(box: Sequence[float], size: tuple[int, int], landmarks: np.ndarray | None = None) -> str:
    """One YOLO label line: ``0 cx cy w h`` normalised by the image size, then ``px py v`` per landmark."""
    width, height = size
    x1, y1, x2, y2 = box
    values = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]
    line = "0 " + " ".join(f"{v:.6f}" for v in values)
    if landmarks is not None:
        points = []
        for x, y in np.asarray(landmarks, dtype=float):
            visible = np.isfinite(x) and np.isfinite(y)
            points.append(f"{x / width:.6f} {y / height:.6f} 2" if visible else "0.000000 0.000000 0")
        line += " " + " ".join(points)
    return line


def landmark_crop_window(roi_box: Sequence[float], margin: float = LANDMARK_CROP_MARGIN) -> tuple[int, int, int, int]:
    """The pixel window ``(left, top, right, bottom)`` (right/bottom exclusive) a ROI-cropped landmark
    export cuts around ``roi_box``: the box widened by ``margin`` x its width and height on each side,
    rounded outward to whole pixels. It may reach past the image; what lies outside is black.

    A landmark model trained on such crops runs on the same window around the detector's box, and its
    points map back as ``x = left + u * (right - left)``, ``y = top + v * (bottom - top)`` for normalised
    ``(u, v)``.
    """
    x1, y1, x2, y2 = (float(v) for v in roi_box)
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    return (int(np.floor(x1 - dx)), int(np.floor(y1 - dy)), int(np.ceil(x2 + dx)), int(np.ceil(y2 + dy)))


def crop_window(pixels: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """``pixels[top:bottom, left:right]``, zero-padded where the window leaves the image (keeps its scale)."""
    left, top, right, bottom = (int(v) for v in window)
    height, width = pixels.shape[:2]
    out = np.zeros((bottom - top, right - left), dtype=pixels.dtype)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if x1 > x0 and y1 > y0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = pixels[y0:y1, x0:x1]
    return out


def export_yolo(dataset: str, out: str | Path, task: str = "detect", *, store: AnnotationStore | None = None,
                max_side: int | None = None, crop: str | None = None,
                roi_margin: float = LANDMARK_CROP_MARGIN) -> ExportReport:
    """The YOLO layout of docs/ARCHITECTURE.md; splits from the store, unsplit images go to train.

    ``task="detect"``: images with an ROI box; ``"landmarks"``: images with box and landmarks (pose set).
    Images are written as 8-bit PNG (what the detector is trained and run on).

    ``max_side``: images whose longer side is larger are shrunk (area averaging) to that side, so
    training does not resize full-size radiographs every epoch; labels are normalised, so they stay the same.
    ``crop="roi"`` (landmarks only): each image is cut to ``landmark_crop_window(roi_box, roi_margin)``
    (the ROI box + ``roi_margin`` of its size per side, default LANDMARK_CROP_MARGIN = 0.1), box and landmarks
    re-expressed in the crop, for a landmark model that runs on the detector's crop. ``data.yaml`` then
    records ``crop: roi`` and ``roi_margin``. An image with a landmark outside its crop is skipped.
    """
    import yaml

    if task not in ("detect", "landmarks"):
        raise DatasetError(f"task must be 'detect' or 'landmarks', got {task!r}")
    if crop not in (None, "roi"):
        raise DatasetError(f"crop must be None or 'roi', got {crop!r}")
    if crop == "roi" and task != "landmarks":
        raise DatasetError("crop='roi' is for task='landmarks' (a detector needs the whole image)")
    if not (np.isfinite(roi_margin) and 0 <= roi_margin <= 1):
        raise DatasetError(f"roi_margin is a fraction of the box size per side, 0 to 1; got {roi_margin}")
    if max_side is not None and int(max_side) < 1:
        raise DatasetError(f"max_side must be a positive number of pixels, got {max_side}")
    items = _labeled_images(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    for item in items:
        if item.roi_box is None:
            report.skipped.append((item.path, "no ROI box"))
            continue
        if task == "landmarks" and item.landmarks is None:
            report.skipped.append((item.path, "no landmarks"))
            continue
        split = item.split or "train"
        try:
            radiograph = read_image(_absolute(item))
        except ImageReadError as error:
            report.skipped.append((item.path, str(error)))
            continue
        pixels, size = radiograph.pixels, (item.width, item.height)
        box = np.asarray(item.roi_box, dtype=float)
        landmarks = item.landmarks if task == "landmarks" else None
        if crop == "roi":
            left, top, right, bottom = window = landmark_crop_window(box, roi_margin)
            size = (right - left, bottom - top)
            box, landmarks = box - [left, top, left, top], landmarks - [left, top]
            inside = (landmarks >= 0).all(axis=1) & (landmarks <= size).all(axis=1)
            outside = int((np.isfinite(landmarks).all(axis=1) & ~inside).sum())
            if outside:
                report.skipped.append((item.path, f"{outside} landmarks lie outside the ROI crop "
                                                  f"(box + {roi_margin:.0%} margin): check the box"))
                continue
            pixels = crop_window(pixels, window)
        _write_png(pixels, out / "images" / split / f"{_stem(item)}.png", max_side)
        line = yolo_line(box, size, landmarks)
        label = out / "labels" / split / f"{_stem(item)}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text(line + "\n")
        report.written += 1
        report.splits[split] = report.splits.get(split, 0) + 1
    if not report.written:
        raise DatasetError(f"dataset {dataset!r} has no images with " + ("a box" if task == "detect" else "box and landmarks"))
    config: dict[str, Any] = {
        "path": str(out.resolve()),
        "train": "images/train",
        # Ultralytics needs a val set; without one it validates on train (the report says so).
        "val": "images/val" if "val" in report.splits else "images/train",
        "names": {0: SPINE_NAME},
    }
    if "train" not in report.splits:
        config["train"] = config["val"]
    if "test" in report.splits:
        config["test"] = "images/test"
    if task == "landmarks":
        config["kpt_shape"] = [23, 3]
        config["flip_idx"] = landmark_flip_index()
    if max_side is not None:
        config["max_side"] = int(max_side)
    if crop == "roi":
        config["crop"] = "roi"
        config["roi_margin"] = float(roi_margin)
    (out / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return report


def export_folder(dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """Class-per-folder ROI crops: ``OUT/<class>/<id>.png`` (whole image when it has no box) + a
    ``<id>.json`` sidecar with patient_id, so ``import folder`` reads it back with its patients."""
    items = _labeled_images(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    for item in items:
        if item.curvature_class is None:
            report.skipped.append((item.path, "no curvature class"))
            continue
        try:
            radiograph = read_image(_absolute(item))
        except ImageReadError as error:
            report.skipped.append((item.path, str(error)))
            continue
        pixels = radiograph.pixels
        if item.roi_box is not None:
            sx, sy = pixels.shape[1] / item.width, pixels.shape[0] / item.height
            x1, y1, x2, y2 = item.roi_box
            pixels = pixels[max(0, int(y1 * sy)):int(np.ceil(y2 * sy)), max(0, int(x1 * sx)):int(np.ceil(x2 * sx))]
        target = out / item.curvature_class / f"{_stem(item)}.png"
        _write_png(pixels, target)
        target.with_suffix(".json").write_text(json.dumps(
            {"patient_id": item.patient_id, "image_id": item.image_id, "cropped_from": item.roi_box}))
        report.written += 1
        report.splits[item.curvature_class] = report.splits.get(item.curvature_class, 0) + 1
    return report


def export_csv(dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """``OUT/manifest.csv`` (path,label,patient_id,x1,y1,x2,y2,split) + the stored files, unchanged, in ``OUT/images``."""
    items = _labeled_images(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    (out / "images").mkdir()
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"])
        for item in items:
            relative = f"images/{_stem(item)}{Path(item.path).suffix}"
            shutil.copyfile(_absolute(item), out / relative)
            box = [f"{v:.2f}" for v in item.roi_box] if item.roi_box else ["", "", "", ""]
            writer.writerow([relative, item.curvature_class or "", item.patient_id, *box, item.split or ""])
            report.written += 1
    return report


def export_coco(dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """``OUT/annotations.json`` + ``OUT/images/<id>.png``: categories are the classes (and ``cervical_spine``
    for a box without a class), keypoints the 23 landmarks."""
    from core.measure import LANDMARK_NAMES

    items = _labeled_images(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    categories = [{"id": i + 1, "name": name, "supercategory": SPINE_NAME, "keypoints": list(LANDMARK_NAMES),
                   "skeleton": []} for i, name in enumerate((*CLASSES, SPINE_NAME))]
    category_id = {c["name"]: c["id"] for c in categories}
    coco: dict[str, Any] = {"info": {"description": f"CerviCurve dataset {dataset}"}, "images": [],
                            "annotations": [], "categories": categories}
    for item in items:
        try:
            radiograph = read_image(_absolute(item))
        except ImageReadError as error:
            report.skipped.append((item.path, str(error)))
            continue
        file_name = f"{_stem(item)}.png"
        _write_png(radiograph.pixels, out / "images" / file_name)
        coco["images"].append({"id": item.image_id, "file_name": file_name, "width": item.width,
                               "height": item.height, "patient_id": item.patient_id, "split": item.split,
                               "curvature_class": item.curvature_class})
        if item.roi_box is not None:
            x1, y1, x2, y2 = item.roi_box
            ann = {"id": len(coco["annotations"]) + 1, "image_id": item.image_id,
                   "category_id": category_id[item.curvature_class or SPINE_NAME],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if item.landmarks is not None:
                visible = np.isfinite(item.landmarks).all(axis=1)
                ann["keypoints"] = [v for (x, y), ok in zip(item.landmarks, visible)
                                    for v in ((float(x), float(y), 2) if ok else (0.0, 0.0, 0))]
                ann["num_keypoints"] = int(visible.sum())
            coco["annotations"].append(ann)
        report.written += 1
    (out / "annotations.json").write_text(json.dumps(coco))
    return report


# ---------------------------------------------------------------- splits and training items


def _patients_by_class(labeled: Sequence[LabeledImage]) -> dict[str, list[str]]:
    """Class -> its patients (sorted), each patient under the class most of its images have (ties: CLASSES order)."""
    per_patient: dict[str, Counter] = {}
    for item in labeled:
        per_patient.setdefault(item.patient_id, Counter())[item.curvature_class] += 1
    strata: dict[str, list[str]] = {name: [] for name in CLASSES}
    for patient, counts in sorted(per_patient.items()):
        strata[max(CLASSES, key=lambda name: (counts[name], -CLASSES.index(name)))].append(patient)
    return {name: patients for name, patients in strata.items() if patients}


def _require_patients(strata: dict[str, list[str]], needed: int, what: str, advice: str) -> None:
    short = [f"{name} has {len(patients)}" for name, patients in strata.items() if len(patients) < needed]
    if short:
        listed = ", ".join(short[:-1]) + (" and " if len(short) > 1 else "") + short[-1]
        have = "" if len(short) == len(strata) else " (patients per class: " + ", ".join(
            f"{name} {len(patients)}" for name, patients in strata.items()) + ")"
        raise DatasetError(f"too few patients for {what}: every class needs at least {needed} patients, "
                           f"but {listed}{have}. {advice}")


def _deal(n: int, fractions: Sequence[float]) -> list[int]:
    """Patients of one class per split: proportional (largest remainder), at least one for every split with
    a share. Needs ``n`` >= the number of such splits."""
    wanted = [f * n for f in fractions]
    counts = [int(np.floor(w)) for w in wanted]
    for i in sorted(range(len(counts)), key=lambda i: counts[i] - wanted[i])[:n - sum(counts)]:
        counts[i] += 1
    for i, fraction in enumerate(fractions):
        if fraction > 0 and counts[i] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return counts


def make_splits(dataset: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, *,
                store: AnnotationStore | None = None) -> dict[str, dict[str, int]]:
    """Assign train/val/test: grouped by patient (no patient in two splits), stratified by class.

    Each class's patients are shuffled (by ``seed``) and dealt to the splits in proportion to ``fractions``,
    at least one to every split with a share, so every class is in every split: a class needs as many
    patients as there are splits (3 for train/val/test, 2 with a zero val or test fraction), else
    DatasetError says which class is short. A patient counts under the class most of its images have.
    Images without a class follow their patient (train when the patient has no labeled image).
    Written to the store; returns split -> class -> count.
    """
    if (len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0)
            or fractions[0] <= 0):
        raise DatasetError("fractions are (train, val, test), each >= 0, summing to 1, with train above 0; "
                           f"got {tuple(fractions)}")
    fractions = [float(f) for f in fractions]
    used = [name for name, f in zip(SPLITS, fractions) if f > 0]
    own = store is None
    store = store or AnnotationStore()
    try:
        items = store.current_labels(dataset)
        labeled = [item for item in items if item.curvature_class is not None]
        if not labeled:
            raise DatasetError(f"dataset {dataset!r} has no labeled images to split")
        strata = _patients_by_class(labeled)
        _require_patients(strata, len(used), f"a {'/'.join(used)} split",
                          f"A class needs one patient in each of {', '.join(used)}: label more patients"
                          + (", or set the val or test fraction to 0." if len(used) == 3 else "."))
        rng = np.random.default_rng(seed)
        patient_split: dict[str, str] = {}
        for patients in strata.values():
            shuffled = [patients[i] for i in rng.permutation(len(patients))]
            start = 0
            for split, count in zip(SPLITS, _deal(len(patients), fractions)):
                patient_split.update((patient, split) for patient in shuffled[start:start + count])
                start += count
        assignment = {item.image_id: patient_split.get(item.patient_id, "train") for item in items}
        store.set_splits(assignment)
    finally:
        if own:
            store.close()
    counts: dict[str, dict[str, int]] = {name: {c: 0 for c in (*CLASSES, "unlabeled")} for name in SPLITS}
    for item in items:
        counts[assignment[item.image_id]][item.curvature_class or "unlabeled"] += 1
    return counts


def kfold_splits(dataset: str, k: int = 5, seed: int = 0, *, include_test: bool = False,
                 store: AnnotationStore | None = None) -> list[Fold]:
    """k patient-grouped, class-stratified folds over the labeled images (the test split held out
    unless ``include_test``), by scikit-learn's ``StratifiedGroupKFold``. Not written to the store: a
    fold is a training choice, not a label.

    Every class must be in every fold's train and val part, so when a class has fewer than ``k`` patients
    the folds are fewer: as many as the smallest class has patients (check ``len()`` of the result).
    A class with under 2 patients is a DatasetError.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise DatasetError(f"k-fold needs k >= 2, got {k}")
    labeled = [item for item in _labeled_images(dataset, store)
               if item.curvature_class is not None and (include_test or item.split != "test")]
    if not labeled:
        raise DatasetError(f"dataset {dataset!r} has no labeled images outside the test split to fold")
    strata = _patients_by_class(labeled)
    _require_patients(strata, 2, "k-fold cross-validation" + ("" if include_test else " (test split excluded)"),
                      "Each fold trains and validates on every class: label more patients.")
    k = min(k, min(len(patients) for patients in strata.values()))
    y = np.array([item.class_index for item in labeled])
    groups = np.array([item.patient_id for item in labeled])
    ids = np.array([item.image_id for item in labeled])
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [Fold(train=ids[tr].tolist(), val=ids[va].tolist()) for tr, va in folds.split(np.zeros((len(ids), 1)), y, groups)]


def training_items(dataset: str, split: str | None = None, *, image_ids: Iterable[int] | None = None,
                   store: AnnotationStore | None = None) -> list[TrainingItem]:
    """Labeled images for the trainer. ``split="train"`` includes unsplit images (as the YOLO export does);
    ``image_ids`` picks a fold."""
    if split is not None and split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    wanted = None if image_ids is None else set(image_ids)
    out = []
    for item in _labeled_images(dataset, store):
        if item.curvature_class is None or (wanted is not None and item.image_id not in wanted):
            continue
        if split is not None and (item.split or "train") != split:
            continue
        out.append(TrainingItem(path=_absolute(item), label=item.class_index, roi_box=item.roi_box,
                                landmarks=item.landmarks, patient_id=item.patient_id, image_id=item.image_id))
    return out


# ---------------------------------------------------------------- CLI

IMPORTERS = ("folder", "csv", "yolo", "coco", "csxa", "dicom")
EXPORTERS = ("folder", "csv", "yolo", "coco")


def configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=IMPORTERS, help="layout of the source")
    parser.add_argument("source", type=Path,
                        help="folder (or CSV / COCO JSON / data.yaml), or a .zip of any of them")
    parser.add_argument("--labels", type=Path, help="COCO JSON, CSXA sheet, or a CSV manifest for DICOM files")
    parser.add_argument("--dataset", help="dataset name (default: the source folder's or the zip's name)")
    parser.add_argument("--sigmoid", choices=("skip", "measure"), default="skip",
                        help="CSXA sigmoid grades 3/4: skip them, or class them by their Cobb angle")
    parser.add_argument("--annotator", help="name recorded in the label history (default import:KIND)")


def run_import(args: argparse.Namespace) -> int:
    from core.archive import ArchiveError

    source = Path(args.source)
    try:
        if source.suffix.lower() == ".zip" and not source.is_dir():
            report = import_archive(args.kind, source, args.labels, dataset=args.dataset, annotator=args.annotator,
                                    sigmoid=args.sigmoid)
        else:
            report = _import_kind(args.kind, source, args.labels, dataset=args.dataset, annotator=args.annotator,
                                  sigmoid=args.sigmoid)
    except ArchiveError as error:
        print(f"error: {source.name} refused: {error}")
        return 2
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    print(report.format())
    nothing = report.imported + report.updated + report.unchanged == 0
    return 1 if nothing and report.skipped else 0


def _import_kind(kind: str, source: Path, labels: Path | None, *, sigmoid: str = "skip", **options) -> ImportReport:
    """``python -m core import KIND SOURCE [--labels FILE]`` as a call."""
    if kind == "folder":
        return import_folder(source, **options)
    if kind == "csv":
        return import_csv(source, **options)
    if kind == "yolo":
        return import_yolo(labels or source, **options)
    if kind == "coco":
        return import_coco(source, labels, **options)
    if kind == "csxa":
        return import_csxa(source, labels, sigmoid=sigmoid, **options)
    if kind == "dicom":
        return import_dicom(source, labels, **options)
    raise DatasetError(f"unknown import kind {kind!r}; expected one of {', '.join(IMPORTERS)}")


def import_archive(kind: str, archive: str | Path | bytes, labels: str | Path | None = None, *,
                   name: str | None = None, sigmoid: str = "skip", dataset: str | None = None,
                   store: AnnotationStore | None = None, annotator: str | None = None,
                   progress: ProgressCallback | None = None) -> ImportReport:
    """Import a zip (a path, or an upload's bytes with its file ``name``) holding a ``kind`` layout.

    The zip is extracted safely (``core.archive.extract_zip``) into a temporary folder inside the
    workspace, the import root found by ``core.archive.import_source``, and the folder deleted afterwards,
    also on failure. ``dataset`` defaults to the archive's name without ``.zip``; stored sources and the
    report say ``<name>.zip/<path inside>``. Raises ``core.archive.ArchiveError`` for a refused archive.
    """
    from core.archive import extract_zip, import_source

    if isinstance(archive, (bytes, bytearray)):
        if not name:
            raise DatasetError("an archive given as bytes needs its file name")
    else:
        archive = Path(archive)
        if not archive.is_file():
            raise DatasetError(f"archive {archive} not found")
        name = name or archive.name
    uploads = settings.home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="import-", dir=uploads))
    try:
        extract_zip(archive, scratch)
        root = import_source(kind, scratch)
        folder = root if root.is_dir() else root.parent
        origin = "/".join((name, *folder.relative_to(scratch).parts))
        report = _import_kind(kind, root, Path(labels) if labels else None, sigmoid=sigmoid,
                              dataset=dataset or Path(name).stem, store=store, annotator=annotator,
                              progress=progress, origin=origin)

        def plain(text: str) -> str:  # reasons may name the scratch folder, which is gone once this returns
            return text.replace(str(folder), origin).replace(str(scratch), name)

        report.skipped = [(plain(file), plain(reason)) for file, reason in report.skipped]
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=EXPORTERS)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--out", type=Path, required=True, help="a new (or empty) folder")
    parser.add_argument("--task", choices=("detect", "landmarks"), default="detect", help="YOLO only")
    parser.add_argument("--max-side", type=int, help="YOLO only: shrink images so their longer side is at most this")
    parser.add_argument("--crop", choices=("roi",), help="YOLO landmarks only: export each image cropped to its ROI")
    parser.add_argument("--roi-margin", type=float, default=LANDMARK_CROP_MARGIN,
                        help="with --crop roi: widen the box by this fraction of its size on each side")


def run_export(args: argparse.Namespace) -> int:
    try:
        if args.kind == "yolo":
            report = export_yolo(args.dataset, args.out, task=args.task, max_side=args.max_side, crop=args.crop,
                                 roi_margin=args.roi_margin)
        else:
            report = {"folder": export_folder, "csv": export_csv, "coco": export_coco}[args.kind](args.dataset, args.out)
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    print(report.format())
    return 0


def configure_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test")
    parser.add_argument("--folds", type=int, help="also show K patient-grouped folds over train+val")


def run_split(args: argparse.Namespace) -> int:
    try:
        fractions = [float(v) for v in str(args.fractions).split(",")]
    except ValueError:
        print(f"error: --fractions must be three numbers like 0.7,0.15,0.15, got {args.fractions!r}")
        return 2
    try:
        counts = make_splits(args.dataset, fractions, seed=args.seed)
        print(f"splits of {args.dataset!r} (patient-grouped, class-stratified, seed {args.seed}):")
        for split, per_class in counts.items():
            print(f"  {split:<5} " + "  ".join(f"{name} {n}" for name, n in per_class.items()))
        if args.folds:
            for number, fold in enumerate(kfold_splits(args.dataset, args.folds, args.seed), start=1):
                print(f"  fold {number}: train {len(fold.train)}  val {len(fold.val)}")
    except DatasetError as error:
        print(f"error: {error}")
        return 2
    return 0
