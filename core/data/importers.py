"""Import images and labels into the annotation store: class folders, CSV manifest, YOLO, COCO, CSXA, DICOM
(de-identified by ``core.data.deid``) and zips of any of them; the ``import`` command.

Importers all end in ``_commit``: every image is read with ``core.data.imaging.read_image`` and every label
validated *before* anything is written; then the files are copied into the workspace by content hash
(``images/<sha256[:2]>/<sha256>.<ext>``) and the rows written in one transaction. If the
transaction fails, the files it copied are deleted again, so an import never half-writes.
Each importer takes ``progress(done, total, name)``, called as each image is checked (the slow
part: reading, DICOM de-identification, validation) and once more, ``(total, total, "")``, when the rows
are written; and ``origin``, recorded as the files' source in place of their folder (``import_archive``
passes ``<archive>.zip/...``: its extraction is deleted after the import).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core import settings
from core.data.datasets import IMAGE_SUFFIXES, DatasetError, parse_class
from core.data.deid import deidentify
from core.data.imaging import read_image
from core.settings import CLASSES
from core.data.store import SPLITS, AnnotationStore, validate_box, validate_class, validate_landmarks

_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm"}
CSXA_GRADES = {1: "normal", 2: "straightened", 5: "reversed"}  # 3 Sigmoid1, 4 Sigmoid2: not one of the three
CSXA_CURVATURE_HEADER = "curvature"  # the column is headed "Curvature: 1.Lordotic, 2.Straight, ..."

ProgressCallback = Callable[[int, int, str], None]  # (done, total, name of the image just checked)


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
        from core.data.measure import LandmarkError, roi_box_from_landmarks

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
        from core.data.measure import read_labelme

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
    from core.data.measure import LandmarkError, measure_landmarks, read_labelme

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


# ---------------------------------------------------------------- CLI and archives

IMPORTERS = ("folder", "csv", "yolo", "coco", "csxa", "dicom")


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
    from core.data.archive import ArchiveError

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

    The zip is extracted safely (``core.data.archive.extract_zip``) into a temporary folder inside the
    workspace, the import root found by ``core.data.archive.import_source``, and the folder deleted afterwards,
    also on failure. ``dataset`` defaults to the archive's name without ``.zip``; stored sources and the
    report say ``<name>.zip/<path inside>``. Raises ``core.data.archive.ArchiveError`` for a refused archive.
    """
    from core.data.archive import extract_zip, import_source

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
