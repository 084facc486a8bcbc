"""What every importer shares before the commit: the candidate it builds for each image it finds, and the checks
of its source (folders, paths that must stay inside an upload) and of its entries' fields (patient ids, numbers,
Labelme files). A bad entry is a ``ValueError`` with the reason, which the importer records as a skip."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.data.datasets import IMAGE_SUFFIXES, DatasetError
from core.data.imaging import check_file_size

ProgressCallback = Callable[[int, int, str], None]  # (done, total, name of the image just checked)


@dataclass
class Candidate:
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


# ---------------------------------------------------------------- sources


def read_input(path: Path) -> bytes:
    """A file's bytes, sized first: a file over ``settings.max_file_bytes()`` is refused, not loaded."""
    try:
        check_file_size(path.name, path.stat().st_size)
        return path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read the file ({error.strerror or error})") from None


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def outside_upload(path: Path, root: Path, origin: str | None) -> bool:
    """An upload's manifest may only name files inside the upload (not the server's own files)."""
    return origin is not None and not path.resolve().is_relative_to(root.resolve())


def relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, an embedded NUL
        return False


def is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- entry validation

_LABELME_ERRORS = (ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError)


def patient_id_from(value: Any, where: str = "patient_id") -> str | None:
    """A patient id from a manifest: text or a whole number, at most 200 characters; None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where} must be text or a whole number, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > 200 or not text.isprintable():
        raise ValueError(f"{where} must be at most 200 printable characters")
    return text


def labelme_landmarks(path: Path) -> np.ndarray:
    from core.data.measure import read_labelme

    try:
        return read_labelme(path).landmarks
    except _LABELME_ERRORS as error:  # read_labelme trusts the JSON's shapes and sizes
        raise ValueError(f"{path.name} is not a usable Labelme file ({error})") from None


def number_list(values: Any, what: str) -> list[float]:
    """A JSON list of finite numbers (booleans and text refused)."""
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a list of numbers, got {short_repr(values)}")
    try:
        out = [float(v) for v in values]
    except OverflowError:
        raise ValueError(f"{what} holds a number too large for a coordinate") from None
    if not all(np.isfinite(out)):
        raise ValueError(f"{what} holds a non-finite number")
    return out


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
