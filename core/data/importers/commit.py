"""The one write path every importer ends in, and its report.

``_commit`` reads every image with ``core.data.imaging.read_image`` and validates every label *before* anything is
written; then the files are copied into the workspace by content hash (``images/<sha256[:2]>/<sha256>.<ext>``) and
the rows written in one transaction. If the transaction fails, the files it copied are deleted again, so an import
never half-writes. ``progress(done, total, name)`` is called as each image is checked (the slow part: reading, DICOM
de-identification, validation) and once more, ``(total, total, "")``, when the rows are written; ``origin`` is
recorded as the files' source in place of their folder (``import_archive`` passes ``<archive>.zip/...``: its
extraction is deleted after the import; paths in its manifests must then stay inside it).

Splits belong to patients: an import that puts one patient in two splits (or in another split than the store has
it, or a new patient into a frozen test split) is refused as a whole, naming the patient and rows, unless
``resplit=True``, which drops those patients' splits from the manifest (run ``split`` afterwards). An image without
a split takes its patient's, from the same import or from the store.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import settings
from core.data.datasets import DatasetError
from core.data.imaging import read_image, require_usable
from core.data.importers.deidentify import deidentify_candidate
from core.data.importers.entries import ProgressCallback, Candidate, read_input, relative_name, short_repr
from core.data.store import SPLITS, AnnotationStore, validate_box, validate_class, validate_landmarks

_FORMAT_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm"}


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
class _Ready:
    candidate: Candidate
    sha256: str
    width: int
    height: int
    suffix: str


def _commit(candidates: list[Candidate], report: ImportReport, store: AnnotationStore, annotator: str,
            progress: ProgressCallback | None = None, resplit: bool = False) -> ImportReport:
    ready = _check_all(candidates, report, progress)
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
            _add_rows(batch, ready, stored_paths, home, report, annotator)
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


def _check_all(candidates: list[Candidate], report: ImportReport,
               progress: ProgressCallback | None) -> list[_Ready]:
    """Every candidate read and validated (the slow part, with progress); a failing one is skipped with its reason."""
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
    return ready


def _add_rows(batch, ready: list[_Ready], stored_paths: list[Path], home: Path, report: ImportReport,
              annotator: str) -> None:
    """The image rows, a label row where the label is new or changed, and the splits, in the open transaction."""
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


def _checked(cand: Candidate, seen: dict[str, str]) -> _Ready:
    """Read and validate one candidate; ValueError with the reason when it cannot be imported."""
    if cand.prepare is not None:
        cand.prepare()
    data = cand.data if cand.data is not None else read_input(cand.file)
    if cand.data is None and _is_dicom(data, cand.file.name):
        # Whatever importer found it: a DICOM is stored only as its de-identified copy, under its pseudonym.
        deidentify_candidate(cand, data, settings.pseudonym_salt())
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


def _is_dicom(data: bytes, name: str) -> bool:
    """As ``read_image`` tells it: the DICM marker, or a .dcm/.dicom name (a DICOM without its preamble)."""
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _validate_candidate(cand: Candidate, width: int, height: int) -> None:
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


def _denormalise(cand: Candidate, width: int, height: int) -> None:
    """YOLO coordinates are fractions of the image size: turn them into pixels (here, once the size is known)."""
    cand.normalised = False
    if cand.roi_box is None:
        return
    cx, cy, w, h = cand.roi_box
    if not all(0.0 <= v <= 1.0 + 1e-6 for v in (cx, cy, w, h)):
        raise ValueError(f"YOLO box {cand.roi_box} is not normalised to 0..1")
    cand.roi_box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
    if cand.landmarks is not None:
        cand.landmarks = np.asarray(cand.landmarks, dtype=float) * np.array([width, height])


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
    data = item.candidate.data if item.candidate.data is not None else read_input(item.candidate.file)
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


def _same_label(current, cand: Candidate) -> bool:
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


def run_import(candidates: list[Candidate], skipped: list[tuple[str, str]], *, source: Path, kind: str,
                dataset: str | None, store: AnnotationStore | None, annotator: str | None,
                progress: ProgressCallback | None = None, origin: str | None = None,
                resplit: bool = False) -> ImportReport:
    report = ImportReport(dataset=dataset or _default_dataset(source), source=origin or str(source),
                          skipped=list(skipped))
    if len(report.dataset) > 200 or not report.dataset.strip() or not report.dataset.isprintable():
        raise DatasetError(f"dataset name must be 1 to 200 printable characters, got {short_repr(report.dataset)}")
    if origin:
        # A temporary extraction is gone after the import: record where the files came from instead.
        root = source if source.is_dir() else source.parent
        for cand in candidates:
            if cand.source is None:
                cand.source = f"{origin}/{relative_name(cand.file, root)}"
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
