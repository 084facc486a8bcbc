"""Import images and labels into the annotation store: class folders, CSV manifest, YOLO, COCO, CSXA, DICOM
(de-identified by ``core.data.deid``) and zips of any of them; the ``import`` command.

Importers all end in ``_commit``: every image is read with ``core.data.imaging.read_image`` and every label
validated *before* anything is written; then the files are copied into the workspace by content hash
(``images/<sha256[:2]>/<sha256>.<ext>``) and the rows written in one transaction. If the
transaction fails, the files it copied are deleted again, so an import never half-writes.
Each importer takes ``progress(done, total, name)``, called as each image is checked (the slow
part: reading, DICOM de-identification, validation) and once more, ``(total, total, "")``, when the rows
are written; and ``origin``, recorded as the files' source in place of their folder (``import_archive``
passes ``<archive>.zip/...``: its extraction is deleted after the import; paths in its manifests must then
stay inside it).

Every entry is checked for its types and values and a bad one is skipped with ``file: reason``; only a
source that cannot be used at all (no folder, an unreadable manifest) is a ``DatasetError``. Splits belong to
patients: an import that puts one patient in two splits (or in another split than the store has it, or a
new patient into a frozen test split) is refused as a whole, naming the patient and rows, unless
``resplit=True``, which drops those patients' splits from the manifest (run ``split`` afterwards). An image
without a split takes its patient's, from the same import or from the store.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core import settings
from core.data.datasets import IMAGE_SUFFIXES, DatasetError, parse_class
from core.data.deid import deidentify
from core.data.imaging import ImageReadError, read_image, require_usable
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
    notes: list[str] = field(default_factory=list)  # what a user should know about what was imported

    def format(self) -> str:
        lines = [f"dataset {self.dataset!r} from {self.source}: {self.imported} imported, "
                 f"{self.updated} updated, {self.unchanged} already present, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
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
            progress: ProgressCallback | None = None, resplit: bool = False) -> ImportReport:
    ready: list[_Ready] = []
    seen: dict[str, str] = {}
    for done, cand in enumerate(candidates, start=1):
        try:
            ready.append(_checked(cand, seen))
        except ValueError as error:  # ImageReadError included: the file is skipped with the reason
            report.skipped.append((cand.name, str(error)))
        if progress is not None:
            progress(done, len(candidates), cand.name)
    converted = sum(1 for item in ready if item.candidate.meta.get("deidentified") and item.candidate.prepare is None)
    if converted:
        report.notes.append(f"{converted} DICOM files were de-identified as python -m core import dicom does; each "
                            "one's patient is the pseudonym of its DICOM PatientID, not a file name or manifest id")
    _patient_splits(ready, report, store, resplit)
    unstated = sum(1 for item in ready if item.candidate.meta.get("burned_in_annotation") == "not stated")
    if unstated:
        report.notes.append(f"{unstated} DICOM files do not state BurnedInAnnotation: look at their pixels for "
                            "names or dates before sharing them")

    sweep_partial_images(store)
    staged: list[tuple[Path, Path]] = []  # (partial file, final name), renamed once the rows are committed
    created_dirs: list[Path] = []
    home = settings.home()
    try:
        stored_paths = [_stage_file(item, staged, created_dirs) for item in ready]
        with store.batch() as batch:
            splits: dict[int, str] = {}
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
                    splits[image_id] = cand.split
                if existing is None:
                    report.imported += 1
                elif changed:
                    report.updated += 1
                else:
                    report.unchanged += 1
            batch.set_splits(splits)  # once: the store checks one split per patient over the whole dataset
    except BaseException:
        # Nothing was committed: take back the files this import added to the images folder.
        for partial, _final in staged:
            partial.unlink(missing_ok=True)
        for folder in reversed(created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    # Committed: the files take their final names now. A kill before the commit leaves only *.<pid>.part files
    # (swept by the next import); a kill between commit and here is finished by that sweep.
    for partial, final in staged:
        os.replace(partial, final)
    if progress is not None:
        progress(len(candidates), len(candidates), "")
    return report


def _checked(cand: _Candidate, seen: dict[str, str]) -> _Ready:
    """Read and validate one candidate; ValueError with the reason when it cannot be imported."""
    if cand.prepare is not None:
        cand.prepare()
    data = cand.data if cand.data is not None else _read_input(cand.file)
    if cand.data is None and _is_dicom(data, cand.file.name):
        # Whatever importer found it: a DICOM is stored only as its de-identified copy, under its pseudonym.
        _deidentify_candidate(cand, data, settings.pseudonym_salt())
        data = cand.data
    sha = hashlib.sha256(data).hexdigest()
    if sha in seen:
        raise ValueError(f"same image as {seen[sha]}")
    radiograph = read_image(data, name=cand.file.name)
    width, height = (int(v) for v in radiograph.original_size)
    require_usable(radiograph, cand.name)
    _validate_candidate(cand, width, height)
    seen[sha] = cand.name
    # The stored name says what the content is, whatever the original extension claimed.
    suffix = cand.suffix or _FORMAT_SUFFIX.get(radiograph.meta.get("format"), cand.file.suffix.lower() or ".img")
    return _Ready(cand, sha, width, height, suffix)


def _read_input(path: Path) -> bytes:
    """A file's bytes, sized first: a file over ``settings.max_file_bytes()`` is refused, not loaded."""
    from core.data.imaging import check_file_size

    try:
        check_file_size(path.name, path.stat().st_size)
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the file ({error.strerror or error})") from None


def _is_dicom(data: bytes, name: str) -> bool:
    """As ``read_image`` tells it: the DICM marker, or a .dcm/.dicom name (a DICOM without its preamble)."""
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


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


def _patient_splits(ready: list[_Ready], report: ImportReport, store: AnnotationStore, resplit: bool) -> None:
    """One split per patient: check the manifest's splits against each other and the store, then give every
    image its patient's split. DatasetError (nothing written yet) naming the patients and rows in conflict."""
    known = store.patient_splits(report.dataset)
    frozen = store.test_frozen_at(report.dataset) is not None
    wanted: dict[str, dict[str, list[str]]] = {}
    for item in ready:
        cand = item.candidate
        if cand.split is not None:
            wanted.setdefault(cand.patient_id, {}).setdefault(cand.split, []).append(cand.name)
    chosen, conflicts = {}, []
    for patient, by_split in wanted.items():
        splits = set(by_split) | ({known[patient]} if patient in known else set())
        rows = "; ".join(f"{split}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                         for split, names in by_split.items())
        if len(splits) > 1:
            held = f"; the store has it in {known[patient]}" if patient in known else ""
            conflicts.append(f"patient {patient!r} is in {' and '.join(sorted(splits))} ({rows}{held})")
        elif frozen and "test" in splits and known.get(patient) != "test":
            conflicts.append(f"patient {patient!r} would join the frozen test split ({rows})")
        else:
            chosen[patient] = splits.pop()
    if conflicts and not resplit:
        raise DatasetError(f"import into {report.dataset!r} refused: every image of a patient must be in one split, "
                           f"and {len(conflicts)} patients are not:\n  " + "\n  ".join(conflicts[:20])
                           + (f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else "")
                           + "\nFix the manifest's split column, or import with --resplit to drop these patients' "
                             "splits and give them new ones with python -m core split.")
    if conflicts:
        report.notes.append(f"{len(conflicts)} patients were given two splits (or a frozen test split) by the "
                            f"manifest: their splits were dropped; run python -m core split --dataset {report.dataset}")
    for item in ready:
        patient = item.candidate.patient_id
        item.candidate.split = chosen.get(patient, known.get(patient))


def _stage_file(item: _Ready, staged: list[tuple[Path, Path]], created_dirs: list[Path]) -> Path:
    """Write an image as ``<final name>.<pid>.part`` and return its final path; ``_commit`` renames it after the
    rows are committed, so a killed import leaves no file under a final name that no row knows."""
    folder = settings.images_dir() / item.sha256[:2]
    dest = folder / f"{item.sha256}{item.suffix}"
    if dest.exists():
        return dest
    if not folder.exists():
        folder.mkdir(parents=True)
        created_dirs.append(folder)
    data = item.candidate.data if item.candidate.data is not None else _read_input(item.candidate.file)
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise DatasetError(f"{item.candidate.name} changed while it was being imported; import again")
    partial = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    staged.append((partial, dest))
    partial.write_bytes(data)
    return dest


def sweep_partial_images(store: AnnotationStore) -> list[Path]:
    """Finish or remove the ``*.part`` image files of imports whose process is gone (a kill -9, a power cut):
    renamed into place when a committed row names the final file, deleted otherwise. Files of running imports
    (their pid alive) are left alone. Returns the files deleted."""
    import psutil

    dead: list[tuple[Path, Path]] = []  # (partial, final)
    for partial in settings.images_dir().glob("*/*.part"):
        final_name, pid, _ = (["", "", ""] + partial.name.rsplit(".", 2))[-3:]  # "<sha>.<ext>", "<pid>", "part"
        if not pid.isdigit():  # "<sha>.<ext>.part": left by a version that kept no pid, always stale
            dead.append((partial, partial.with_name(partial.name[:-len(".part")])))
        elif not psutil.pid_exists(int(pid)):
            dead.append((partial, partial.with_name(final_name)))
    if not dead:
        return []
    home = settings.home()
    known = {image.path for image in store.images()}
    removed = []
    for partial, final in dead:
        if not final.exists() and final.relative_to(home).as_posix() in known:
            os.replace(partial, final)
        else:
            partial.unlink(missing_ok=True)
            removed.append(partial)
    return removed


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
                progress: ProgressCallback | None = None, origin: str | None = None,
                resplit: bool = False) -> ImportReport:
    report = ImportReport(dataset=dataset or _default_dataset(source), source=origin or str(source),
                          skipped=list(skipped))
    if len(report.dataset) > 200 or not report.dataset.strip() or not report.dataset.isprintable():
        raise DatasetError(f"dataset name must be 1 to 200 printable characters, got {_short(report.dataset)}")
    if origin:
        # A temporary extraction is gone after the import: record where the files came from instead.
        root = source if source.is_dir() else source.parent
        for cand in candidates:
            if cand.source is None:
                cand.source = f"{origin}/{_relative_name(cand.file, root)}"
    own_store = store is None
    store = store or AnnotationStore()
    try:
        return _commit(candidates, report, store, annotator or f"import:{kind}", progress, resplit)
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


def _outside(path: Path, root: Path, origin: str | None) -> bool:
    """An upload's manifest may only name files inside the upload (not the server's own files)."""
    return origin is not None and not path.resolve().is_relative_to(root.resolve())


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- entry validation

_LABELME_ERRORS = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError)


def _patient(value: Any, where: str = "patient_id") -> str | None:
    """A patient id from a manifest: text or a whole number, at most 200 characters; None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where} must be text or a whole number, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > 200 or not text.isprintable():
        raise ValueError(f"{where} must be at most 200 printable characters")
    return text


def _labelme_landmarks(path: Path) -> np.ndarray:
    from core.data.measure import read_labelme

    try:
        return read_labelme(path).landmarks
    except _LABELME_ERRORS as error:  # read_labelme trusts the JSON's shapes and sizes
        raise ValueError(f"{path.name} is not a usable Labelme file ({error})") from None


def _numbers(values: Any, what: str) -> list[float]:
    """A JSON list of finite numbers (booleans and text refused)."""
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a list of numbers, got {_short(values)}")
    try:
        out = [float(v) for v in values]
    except OverflowError:
        raise ValueError(f"{what} holds a number too large for a coordinate") from None
    if not all(np.isfinite(out)):
        raise ValueError(f"{what} holds a non-finite number")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
        return False


# ---------------------------------------------------------------- importers


def import_folder(src: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
                  annotator: str | None = None,
                  progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A folder of films, classed by folder where it is a class-per-folder tree (``SRC/<class>/**/<image>``, class
    names or synonyms as folder names). Films in no class folder come in unlabeled, to be labeled on the Label
    page: that is how a team's own films usually arrive.

    A JSON sidecar ``<image stem>.json`` may give ``patient_id`` (else the file stem is the patient) and,
    when it is a Labelme file, the 23 landmarks.
    """
    src = _require_dir(Path(src), "folder of films")
    candidates, skipped = [], []
    for path in _image_files(src):
        name = _relative_name(path, src)
        folders = path.relative_to(src).parts[:-1]
        curvature_class = next((parse_class(f) for f in reversed(folders) if parse_class(f)), None)
        cand = _Candidate(file=path, name=name, patient_id=path.stem, curvature_class=curvature_class)
        sidecar = path.with_suffix(".json")
        try:
            cand.patient_id = _patient(path.stem, "the file name") or "unnamed"
            if sidecar.exists():
                _apply_sidecar(cand, sidecar)
        except ValueError as error:
            skipped.append((name, str(error)))
            continue
        candidates.append(cand)
    report = _run_import(candidates, skipped, source=src, kind="folder", dataset=dataset, store=store,
                         annotator=annotator, progress=progress, origin=origin)
    unlabeled = sum(1 for c in candidates if c.curvature_class is None)
    if unlabeled:
        report.notes.append(f"{unlabeled} film(s) in no class folder (normal, straightened, reversed or a synonym "
                            "such as lordotic, straight, kyphotic) came in unlabeled: label them on the Label page")
    return report


def _apply_sidecar(cand: _Candidate, sidecar: Path) -> None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"sidecar {sidecar.name} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {sidecar.name} must hold a JSON object")
    cand.patient_id = _patient(data.get("patient_id"), f"sidecar {sidecar.name}: patient_id") or cand.patient_id
    if data.get("roi_box") is not None:
        cand.roi_box = _numbers(data["roi_box"], f"sidecar {sidecar.name}: roi_box")
    if "shapes" in data:
        cand.landmarks = _labelme_landmarks(sidecar)


def _read_manifest(csv_path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows of a ``path,label,patient_id[,x1,y1,x2,y2][,split]`` manifest, each checked; bad rows come back as skips."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [str(h).strip().lower() for h in reader.fieldnames or []]
            raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the manifest {csv_path}: {error}") from None
    missing = [col for col in ("path", "label") if col not in header]
    if missing:
        raise DatasetError(f"{csv_path.name} needs the columns path,label[,patient_id,x1,y1,x2,y2]; "
                           f"missing: {', '.join(missing)}")
    rows, skipped = [], []
    for number, raw in enumerate(raw_rows, start=2):  # line numbers as a spreadsheet shows them
        # A row longer than the header puts its extra cells in a list under the key None: ignored.
        row = {str(k).strip().lower(): (v if isinstance(v, str) else "").strip() for k, v in raw.items() if k is not None}
        where = f"{csv_path.name} line {number} ({_short(row.get('path'))[1:-1] if row.get('path') else 'no path'})"
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
        try:
            patient_id = _patient(row.get("patient_id"))
        except ValueError as error:
            skipped.append((where, str(error)))
            continue
        rows.append({"where": where, "path": row["path"], "class": curvature_class, "box": box,
                     "patient_id": patient_id, "split": split})
    return rows, skipped


def import_csv(csv_path: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
               annotator: str | None = None, progress: ProgressCallback | None = None,
               origin: str | None = None, resplit: bool = False) -> ImportReport:
    """A manifest ``path,label,patient_id[,x1,y1,x2,y2][,split]``; paths relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DatasetError(f"manifest {csv_path} not found")
    rows, skipped = _read_manifest(csv_path)
    candidates = []
    for row in rows:
        path = Path(row["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        if _outside(path, csv_path.parent, origin):
            skipped.append((row["where"], "the path leads outside the uploaded folder"))
            continue
        if not _is_file(path):
            skipped.append((row["where"], f"file not found: {path}"))
            continue
        try:
            patient_id = row["patient_id"] or _patient(path.stem, "the file name") or "unnamed"
        except ValueError as error:
            skipped.append((row["where"], str(error)))
            continue
        candidates.append(_Candidate(file=path, name=row["where"], patient_id=patient_id,
                                     curvature_class=row["class"], roi_box=row["box"], split=row["split"]))
    return _run_import(candidates, skipped, source=csv_path, kind="csv", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def _yolo_label_path(image: Path) -> Path:
    # Ultralytics' rule: the last "images" folder in the path becomes "labels".
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _yolo_names(names: Any, yaml_path: Path) -> dict[int, str]:
    """data.yaml ``names``: a list, or a mapping from class id to name."""
    if names is None:
        return {}
    if isinstance(names, list):
        return {i: str(name) for i, name in enumerate(names)}
    if isinstance(names, dict):
        out = {}
        for key, name in names.items():
            if isinstance(key, bool) or not isinstance(key, int) and not (isinstance(key, str) and key.isdigit()):
                raise DatasetError(f"{yaml_path.name}: class ids in 'names' must be whole numbers, got {_short(key)}")
            out[int(key)] = str(name)
        return out
    raise DatasetError(f"{yaml_path.name}: 'names' must be a list or a mapping of class id to name")


def _yolo_objects(label_file: Path) -> list[list[float]]:
    """The lines of a YOLO label file as numbers; ValueError with the reason."""
    try:
        text = label_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"label file {label_file.name} is not YOLO text ({error})") from None
    objects = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as error:
            raise ValueError(f"label file {label_file.name} is not YOLO text ({error})") from None
        if len(values) < 5:
            raise ValueError(f"{label_file.name}: a YOLO line is 'class cx cy w h', got {len(values)} values")
        if not all(np.isfinite(values)):
            raise ValueError(f"{label_file.name}: a YOLO line holds a non-finite number")
        if values[0] < 0 or values[0] != int(values[0]):
            raise ValueError(f"{label_file.name}: the class id {values[0]:g} is not a whole number >= 0")
        objects.append(values)
    return objects


def import_yolo(src: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
                annotator: str | None = None, progress: ProgressCallback | None = None,
                origin: str | None = None, resplit: bool = False) -> ImportReport:
    """A YOLO detection (or pose) set: ``data.yaml`` + ``images/<split>`` + ``labels/<split>``.

    Gives the ROI box (the largest box when a file holds several) and, for a 23-keypoint pose set, the
    landmarks. When the set's class names are curvature classes, the class too. YOLO has no patient
    field: the file stem is the patient.
    """
    import yaml

    from core.data import safe_yaml

    src = Path(src)
    yaml_path = src if src.is_file() else src / "data.yaml"
    if not yaml_path.is_file():
        raise DatasetError(f"no data.yaml in {src}")
    try:
        config = safe_yaml.load(yaml_path.read_text(encoding="utf-8"))  # no aliases: a 334-byte bomb is refused
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise DatasetError(f"cannot read {yaml_path}: {error}") from None
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise DatasetError(f"{yaml_path.name} must be a mapping (path:, train:, val:, names:), "
                           f"not a {type(config).__name__}")
    root = yaml_path.parent
    base = Path(str(config.get("path") or root))
    base = base if base.is_absolute() else root / base
    if not _is_dir(base) or _outside(base, root, origin):
        base = root  # a set moved from another machine
    names = _yolo_names(config.get("names"), yaml_path)

    images: dict[Path, str | None] = {}
    skipped: list[tuple[str, str]] = []
    for split in ("train", "val", "test"):
        entries = config.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            where = base / str(entry)
            if _outside(where, root, origin):
                skipped.append((f"{yaml_path.name} {split}: {_short(entry)}", "leads outside the uploaded folder"))
                continue
            if _is_dir(where):
                files = _image_files(where)
            elif _is_file(where):
                try:
                    files = [base / line.strip() for line in where.read_text(encoding="utf-8").splitlines()
                             if line.strip()]
                except (OSError, UnicodeDecodeError) as error:
                    skipped.append((f"{yaml_path.name} {split}: {_short(entry)}", f"cannot read the list ({error})"))
                    continue
            else:
                files = []
            for path in files:
                if _outside(path, root, origin):
                    skipped.append((_short(str(path)), "leads outside the uploaded folder"))
                elif _is_file(path):
                    images.setdefault(path.resolve(), split)
    if not images:
        images = {path.resolve(): None for path in _image_files(base / "images")}
    candidates = []
    for path, split in sorted(images.items()):
        name = _relative_name(path, base.resolve())
        try:
            patient_id = _patient(path.stem, "the file name") or "unnamed"
            objects = _yolo_objects(_yolo_label_path(path)) if _is_file(_yolo_label_path(path)) else []
        except ValueError as error:
            skipped.append((name, str(error)))
            continue
        cand = _Candidate(file=path, name=name, patient_id=patient_id, split=split)
        if objects:
            label_file = _yolo_label_path(path)
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
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


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


def _coco_key(value: Any) -> int | str | None:
    """An id as COCO files use them (a whole number, sometimes text); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return value


def _coco_annotation(cand: _Candidate, anns: list[dict], categories: dict) -> None:
    """The largest box of an image's annotations, its category and keypoints onto ``cand``; ValueError."""
    boxes = []
    for ann in anns:
        bbox = _numbers(ann["bbox"], f"annotation {_short(ann.get('id'))}: bbox")
        if len(bbox) != 4:
            raise ValueError(f"annotation {_short(ann.get('id'))}: bbox must be [x, y, width, height], "
                             f"got {_short(ann['bbox'])}")
        x, y, w, h = bbox
        boxes.append((w * h, [x, y, x + w, y + h], ann))
    _, cand.roi_box, ann = max(boxes, key=lambda b: b[0])
    category = categories.get(_coco_key(ann.get("category_id")))
    cand.curvature_class = parse_class(category or "") or cand.curvature_class
    keypoints = ann.get("keypoints") or []
    if keypoints:
        values = _numbers(keypoints, f"annotation {_short(ann.get('id'))}: keypoints")
        if len(values) == 23 * 3:
            points = np.array(values, dtype=float).reshape(23, 3)
            points[points[:, 2] <= 0, :2] = np.nan
            cand.landmarks = points[:, :2]
    cand.meta["coco"] = {"annotations": len(anns), "category": category}


def import_coco(src: str | Path, labels: str | Path | None = None, *, dataset: str | None = None,
                store: AnnotationStore | None = None, annotator: str | None = None,
                progress: ProgressCallback | None = None, origin: str | None = None,
                resplit: bool = False) -> ImportReport:
    """A COCO detection (or keypoint) file: boxes, class from the category name, landmarks from 23 keypoints.

    ``src`` is the annotation JSON, or the images folder with ``labels`` naming the JSON. An image with
    several annotations keeps the largest box. ``patient_id``, ``split`` and ``curvature_class`` on an image
    entry are CerviCurve's additions (COCO has no image-level label); other COCO files simply lack them.
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise DatasetError(f"{json_path} is not a COCO annotation file ({error})") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DatasetError(f"{Path(json_path).name} is not a COCO annotation file: it needs an 'images' list")
    annotations, raw_categories = coco.get("annotations") or [], coco.get("categories") or []
    if not isinstance(annotations, list) or not isinstance(raw_categories, list):
        raise DatasetError(f"{Path(json_path).name}: 'annotations' and 'categories' must be lists")

    skipped: list[tuple[str, str]] = []
    categories: dict[Any, str] = {}
    for number, category in enumerate(raw_categories):
        key = _coco_key(category.get("id")) if isinstance(category, dict) else None
        if key is None:
            skipped.append((f"categories[{number}]", f"a category needs an id, got {_short(category)}"))
        else:
            categories[key] = str(category.get("name") or "")
    by_image: dict[Any, list[dict]] = {}
    for number, ann in enumerate(annotations):
        key = _coco_key(ann.get("image_id")) if isinstance(ann, dict) else None
        if key is None:
            skipped.append((f"annotations[{number}]", f"an annotation needs an image_id, got {_short(ann)}"))
        elif ann.get("bbox"):
            by_image.setdefault(key, []).append(ann)
    candidates = []
    for number, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            skipped.append((f"images[{number}]", f"an image needs a file_name, got {_short(entry)}"))
            continue
        file_name = entry["file_name"]
        path = next((p for p in (image_root / file_name, image_root / "images" / file_name) if _is_file(p)), None)
        if path is not None and _outside(path, image_root, origin):
            skipped.append((file_name, "the path leads outside the uploaded folder"))
            continue
        if path is None:
            skipped.append((file_name, "file not found"))
            continue
        try:
            patient_id = _patient(entry.get("patient_id")) or _patient(path.stem, "the file name") or "unnamed"
            split = entry.get("split")
            if split is not None and (not isinstance(split, str) or split not in SPLITS):
                raise ValueError(f"unknown split {_short(split)}; expected one of {', '.join(SPLITS)}")
            label = entry.get("curvature_class")
            if label is not None and (not isinstance(label, str) or label and parse_class(label) is None):
                raise ValueError(f"unknown curvature_class {_short(label)}; expected one of {', '.join(CLASSES)}")
            cand = _Candidate(file=path, name=file_name, patient_id=patient_id, split=split,
                              curvature_class=parse_class(label or ""))
            anns = by_image.get(_coco_key(entry.get("id")), []) if _coco_key(entry.get("id")) is not None else []
            if anns:
                _coco_annotation(cand, anns, categories)
        except ValueError as error:
            skipped.append((file_name, str(error)))
            continue
        candidates.append(cand)
    return _run_import(candidates, skipped, source=Path(json_path), kind="coco", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def read_csxa_sheet(path: Path) -> dict[int, dict]:
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
    # "Curvature: 1.Lordotic, ..." in the published sheet, "Cervical curvature status: 1. Normal; ..." in others
    curve_col = next((i for i, h in enumerate(header) if CSXA_CURVATURE_HEADER in h.lower()), None)
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
    """A sheet cell as JSON can store it (the image's meta): a finite number, text, or None."""
    value = value.item() if hasattr(value, "item") else value
    if value is None or isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return str(value)[:200]  # dates, times, booleans


def csxa_case_number(stem: str, cases: dict[int, Any]) -> int | None:
    """The sheet's case number of a CSXA file name, or None.

    CSXA names a file by its four-digit case number followed directly by the patient's age (``000149`` =
    case 1, aged 49); the phantom writer separates them (``0001_49``). A run of more than four digits is
    read as case + age first: with ~5,000 cases, the whole run (149) is often a case too, the wrong one.
    The whole run is the case only when its first four digits are not in the sheet (or it has four or fewer).
    """
    match = re.match(r"\d+", stem)
    if match is None:
        return None
    digits = match.group()
    if len(digits) > 4 and int(digits[:4]) in cases:
        return int(digits[:4])
    return int(digits) if int(digits) in cases else None


def import_csxa(src: str | Path, sheet: str | Path | None = None, *, sigmoid: str = "skip",
                dataset: str | None = None, store: AnnotationStore | None = None,
                annotator: str | None = None,
                progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """The CSXA layout: images (``datasets-PNG/`` or anywhere under ``src``), Labelme JSON with the same
    stem, and ``datasets.xlsx``/``.csv`` with the curvature grade per case number
    (file names: see ``csxa_case_number``).

    Grades 1/2/5 -> normal/straightened/reversed. Sigmoid grades 3 and 4 are skipped, or with
    ``sigmoid="measure"`` classed by the Cobb rule on their landmarks. The ROI box comes from the
    landmarks; the patient is the case number.
    """
    from core.data.measure import LandmarkError, measure_landmarks, read_facing

    if sigmoid not in ("skip", "measure"):
        raise DatasetError(f"sigmoid must be 'skip' or 'measure', got {sigmoid!r}")
    src = _require_dir(Path(src), "CSXA folder")
    if sheet is None:
        found = [p for name in ("datasets.xlsx", "datasets.csv") for p in sorted(src.rglob(name))]
        if not found:
            raise DatasetError(f"no datasets.xlsx or datasets.csv under {src}; pass the sheet with --labels")
        sheet = found[0]
    cases = read_csxa_sheet(Path(sheet))
    image_dir = next((p for p in [src / "datasets-PNG", *sorted(src.rglob("datasets-PNG"))] if p.is_dir()), src)
    labelme = {}
    for json_path in sorted(src.rglob("*.json")):
        labelme.setdefault(json_path.stem, json_path)

    candidates, skipped = [], []
    for path in _image_files(image_dir):
        name = _relative_name(path, src)
        number = csxa_case_number(path.stem, cases)
        if number is None:
            match = re.match(r"\d+", path.stem)
            run = match.group() if match else ""
            reason = ("file name does not start with a case number" if not run else
                      f"case {int(run[:4])} is not in {Path(sheet).name} (nor case {int(run)})" if len(run) > 4 else
                      f"case {int(run)} is not in {Path(sheet).name}")
            skipped.append((name, reason))
            continue
        case = cases[number]
        json_path = path.with_suffix(".json") if path.with_suffix(".json").is_file() else labelme.get(path.stem)
        landmarks = None
        if json_path is not None:
            try:
                landmarks = _labelme_landmarks(json_path)
            except ValueError as error:
                skipped.append((name, str(error)))
                continue
        grade = case["grade"]
        meta = {"csxa": {"number": number, "curvature_grade": grade,
                         **{k: case[k] for k in ("age", "sex") if case.get(k) is not None}}}
        if grade is None and landmarks is not None:
            # no grade in the sheet: the landmarks still teach the detector and the landmark model
            curvature_class = None
        elif grade in CSXA_GRADES:
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
                facing = read_facing(read_image(path).pixels, landmarks).facing  # the lean flips on some necks
                curvature_class = measure_landmarks(landmarks, facing=facing).rule_class
            except (LandmarkError, ImageReadError) as error:
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
                 progress: ProgressCallback | None = None, origin: str | None = None,
                 resplit: bool = False) -> ImportReport:
    """A folder of DICOM files, de-identified on import (the workspace only ever holds the de-identified copy).

    ``labels`` is an optional manifest (``path,label[,x1,y1,x2,y2][,split]``) matched by relative path or file
    stem; its patient ids are ignored: the patient is the salted pseudonym of the DICOM PatientID.
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
        # The source is set pseudonymous by _deidentify_candidate: the file name may carry a name or a date.
        cand = _Candidate(file=path, name=name, patient_id="", curvature_class=row.get("class"),
                          roi_box=row.get("box"), split=row.get("split"), suffix=".dcm",
                          meta={"deidentified": True})
        # Reading and de-identifying is the slow part: it runs while _commit checks (and reports progress).
        cand.prepare = lambda cand=cand: _deidentified_copy(cand, salt)
        candidates.append(cand)
    return _run_import(candidates, skipped, source=src, kind="dicom", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def _deidentified_copy(cand: _Candidate, salt: bytes) -> None:
    """Read ``cand.file`` as DICOM and put its de-identified bytes and patient pseudonym on ``cand``;
    ValueError with the reason for a file that cannot or must not be stored."""
    _deidentify_candidate(cand, _read_input(cand.file), salt)


def _deidentify_candidate(cand: _Candidate, data: bytes, salt: bytes) -> None:
    """De-identify DICOM ``data`` onto ``cand``: its bytes, patient pseudonym, a pseudonymous source (the file name
    may name the patient) and ``.dcm``; ValueError with the reason for a file that cannot or must not be stored."""
    from core.data.imaging import ImageReadError, read_dicom_dataset

    path = cand.file
    try:
        # A .dcm without the 128-byte preamble is still DICOM; anything else must carry the marker. The budgets
        # (pixels, declared and inflated bytes) apply before any pixel data is touched.
        ds = read_dicom_dataset(data, path.name, force=path.suffix.lower() in (".dcm", ".dicom"))
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        has_pixels = "PixelData" in ds
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for a damaged file, also when reading an element
        raise ValueError(f"not a readable DICOM file ({' '.join(str(error).split())[:200]})") from None
    if burned == "YES":
        raise ValueError("BurnedInAnnotation is YES: the pixels may show who the patient is; "
                         "remove the annotation before importing")
    if not has_pixels:
        raise ValueError("this DICOM holds no image: no pixel data (no PixelData element)")
    buffer = io.BytesIO()
    try:
        done = deidentify(ds, salt)
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as error:  # pydicom raises several types for a dataset it cannot encode
        raise ValueError(f"cannot write the de-identified copy ({' '.join(str(error).split())[:200]})") from None
    cand.data, cand.patient_id, cand.suffix = buffer.getvalue(), done.pseudonym, ".dcm"
    cand.source = "dicom:" + hmac.new(salt, cand.name.encode(errors="replace"), hashlib.sha256).hexdigest()[:16]
    cand.meta["deidentified"] = True
    cand.meta["burned_in_annotation"] = done.burned_in_annotation


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
    parser.add_argument("--resplit", action="store_true",
                        help="when the manifest puts a patient in two splits, drop that patient's splits (then run "
                             "split) instead of refusing the import")


def run_import(args: argparse.Namespace) -> int:
    from core.data.archive import ArchiveError

    from sqlalchemy.exc import SQLAlchemyError

    source = Path(args.source)
    options = dict(dataset=args.dataset, annotator=args.annotator, sigmoid=args.sigmoid, resplit=args.resplit)
    try:
        if source.suffix.lower() == ".zip" and not source.is_dir():
            report = import_archive(args.kind, source, args.labels, **options)
        else:
            report = _import_kind(args.kind, source, args.labels, **options)
    except ArchiveError as error:
        print(f"error: {source.name} refused: {error}")
        return 2
    except (DatasetError, ValueError) as error:
        print(f"error: {error}")
        return 2
    except OSError as error:  # a full disk, a folder without write permission
        print(f"error: the import could not write to the workspace ({error}); nothing was imported")
        return 2
    except SQLAlchemyError as error:
        print(f"error: the annotation database refused the import ({' '.join(str(error).split())[:300]}); "
              "nothing was imported")
        return 2
    print(report.format())
    # Non-zero only when nothing at all came in: a bad entry among good ones is reported and skipped.
    return 1 if report.imported + report.updated + report.unchanged == 0 else 0


def _import_kind(kind: str, source: Path, labels: Path | None, *, sigmoid: str = "skip", resplit: bool = False,
                 **options) -> ImportReport:
    """``python -m core import KIND SOURCE [--labels FILE]`` as a call."""
    if kind == "folder":
        return import_folder(source, **options)
    if kind == "csv":
        return import_csv(source, resplit=resplit, **options)
    if kind == "yolo":
        return import_yolo(labels or source, resplit=resplit, **options)
    if kind == "coco":
        return import_coco(source, labels, resplit=resplit, **options)
    if kind == "csxa":
        return import_csxa(source, labels, sigmoid=sigmoid, **options)
    if kind == "dicom":
        return import_dicom(source, labels, resplit=resplit, **options)
    raise DatasetError(f"unknown import kind {kind!r}; expected one of {', '.join(IMPORTERS)}")


def import_archive(kind: str, archive: str | Path | bytes, labels: str | Path | None = None, *,
                   name: str | None = None, sigmoid: str = "skip", dataset: str | None = None,
                   store: AnnotationStore | None = None, annotator: str | None = None,
                   progress: ProgressCallback | None = None, resplit: bool = False) -> ImportReport:
    """Import a zip (a path, or an upload's bytes with its file ``name``) holding a ``kind`` layout.

    The zip is extracted safely (``core.data.archive.extract_zip``) into a temporary folder inside the
    workspace, the import root found by ``core.data.archive.import_source``, and the folder deleted afterwards,
    also on failure. ``dataset`` defaults to the archive's name without ``.zip``; stored sources and the
    report say ``<name>.zip/<path inside>``. Raises ``core.data.archive.ArchiveError`` for a refused archive.
    """
    from core.data.archive import extract_zip, import_source, scratch_folder

    if isinstance(archive, (bytes, bytearray)):
        if not name:
            raise DatasetError("an archive given as bytes needs its file name")
    else:
        archive = Path(archive)
        if not archive.is_file():
            raise DatasetError(f"archive {archive} not found")
        name = name or archive.name
    with scratch_folder("import") as scratch:
        extract_zip(archive, scratch)
        root = import_source(kind, scratch)
        folder = root if root.is_dir() else root.parent
        origin = "/".join((name, *folder.relative_to(scratch).parts))
        report = _import_kind(kind, root, Path(labels) if labels else None, sigmoid=sigmoid, resplit=resplit,
                              dataset=dataset or Path(name).stem, store=store, annotator=annotator,
                              progress=progress, origin=origin)

        def plain(text: str) -> str:  # reasons may name the scratch folder, which is gone once this returns
            return text.replace(str(folder), origin).replace(str(scratch), name)

        report.skipped = [(plain(file), plain(reason)) for file, reason in report.skipped]
        return report


# ---------------------------------------------------------------------------------------------- page uploads
def import_uploads(kind: str, files: Sequence[tuple[str, bytes]], *, dataset: str,
                   store: AnnotationStore | None = None, progress: ProgressCallback | None = None,
                   resplit: bool = False, actor=None) -> ImportReport:
    """What an upload widget received: one zip of a ``kind`` layout, or (``dicom``) DICOM files and zips of them.

    Files are unpacked into a scratch folder inside the workspace (deleted afterwards, also on failure); two uploads
    with the same name are kept apart; report lines name the uploads, never the scratch folder.
    """
    from core.data.accounts import authorize
    from core.data.archive import extract_zip, scratch_folder

    authorize(actor, "import", f"{kind} upload into {dataset}", url=store.url if store is not None else None)
    if not files:
        raise DatasetError("nothing was uploaded")
    if kind != "dicom":
        if len(files) != 1 or not files[0][0].lower().endswith(".zip"):
            raise DatasetError(f"a {kind} import is one .zip file")
        name, data = files[0]
        return import_archive(kind, data, name=Path(name).name, dataset=dataset, store=store, progress=progress,
                              resplit=resplit)
    with scratch_folder("upload") as scratch:
        for number, (name, data) in enumerate(files, start=1):
            # IM0001.dcm from two studies: the second gets a folder of its own
            name = Path(name).name or f"upload-{number}"
            target = scratch / name if not (scratch / name).exists() else scratch / f"upload-{number}" / name
            if name.lower().endswith(".zip"):
                extract_zip(data, target.with_suffix(""))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        report = import_dicom(scratch, dataset=dataset, store=store, progress=progress, resplit=resplit)
        report.skipped = [(file.replace(f"{scratch}/", ""), reason.replace(f"{scratch}/", ""))
                          for file, reason in report.skipped]
        return report


def import_phantoms(dataset: str, *, store: AnnotationStore | None = None, progress: ProgressCallback | None = None,
                    actor=None, **phantom_options) -> ImportReport:
    """Generate phantoms (``core.data.phantom.write_phantoms`` options) and import them with their full truth."""
    from core.data.accounts import authorize
    from core.data.archive import scratch_folder
    from core.data.phantom import write_phantoms

    authorize(actor, "import", f"phantoms into {dataset}", url=store.url if store is not None else None)
    with scratch_folder("phantoms") as scratch:
        def generated(done: int, total: int, case) -> None:
            if progress is not None:
                progress(done, total, f"phantom {done}/{total}")

        # The CSXA layout carries class, landmarks (hence the box) and patient: everything a phantom knows.
        write_phantoms(scratch, formats=("csxa",), progress=generated, **phantom_options)
        return import_csxa(scratch / "csxa", dataset=dataset, store=store, progress=progress)
