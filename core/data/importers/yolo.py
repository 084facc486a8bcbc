"""A YOLO detection or pose set: ``data.yaml`` + ``images/<split>`` + ``labels/<split>``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import DatasetError, parse_class
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.entries import (
    ProgressCallback,
    Candidate,
    image_files,
    is_dir,
    is_file,
    outside_upload,
    patient_id_from,
    relative_name,
    short_repr,
)
from core.data.store import AnnotationStore


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
                raise DatasetError(f"{yaml_path.name}: class ids in 'names' must be whole numbers, got {short_repr(key)}")
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
    yaml_path, config = _read_data_yaml(Path(src))
    root = yaml_path.parent
    base = Path(str(config.get("path") or root))
    base = base if base.is_absolute() else root / base
    if not is_dir(base) or outside_upload(base, root, origin):
        base = root  # a set moved from another machine
    names = _yolo_names(config.get("names"), yaml_path)

    skipped: list[tuple[str, str]] = []
    images = _listed_images(config, base, yaml_path, origin, skipped)
    if not images:
        images = {path.resolve(): None for path in image_files(base / "images")}
    candidates = []
    for path, split in sorted(images.items()):
        name = relative_name(path, base.resolve())
        try:
            candidates.append(_yolo_candidate(path, name, split, names))
        except ValueError as error:
            skipped.append((name, str(error)))
    return run_import(candidates, skipped, source=yaml_path.parent, kind="yolo", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def _read_data_yaml(src: Path) -> tuple[Path, dict]:
    """``data.yaml`` (``src`` itself or in the folder ``src``) as a mapping; DatasetError when it is not one."""
    import yaml

    from core.data import safe_yaml

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
    return yaml_path, config


def _listed_images(config: dict, base: Path, yaml_path: Path, origin: str | None,
                   skipped: list[tuple[str, str]]) -> dict[Path, str | None]:
    """Image -> split for what data.yaml's train/val/test name (folders or list files); the first split naming an
    image keeps it. Entries leading outside an upload, or unreadable lists, go to ``skipped``."""
    root = yaml_path.parent
    images: dict[Path, str | None] = {}
    for split in ("train", "val", "test"):
        entries = config.get(split)
        for entry in entries if isinstance(entries, list) else [entries] if entries else []:
            where = base / str(entry)
            if outside_upload(where, root, origin):
                skipped.append((f"{yaml_path.name} {split}: {short_repr(entry)}", "leads outside the uploaded folder"))
                continue
            if is_dir(where):
                files = image_files(where)
            elif is_file(where):
                try:
                    files = [base / line.strip() for line in where.read_text(encoding="utf-8").splitlines()
                             if line.strip()]
                except (OSError, UnicodeDecodeError) as error:
                    skipped.append((f"{yaml_path.name} {split}: {short_repr(entry)}", f"cannot read the list ({error})"))
                    continue
            else:
                files = []
            for path in files:
                if outside_upload(path, root, origin):
                    skipped.append((short_repr(str(path)), "leads outside the uploaded folder"))
                elif is_file(path):
                    images.setdefault(path.resolve(), split)
    return images


def _yolo_candidate(path: Path, name: str, split: str | None, names: dict[int, str]) -> Candidate:
    """One image with its label file's largest box (and 23 keypoints, if any); ValueError with the reason."""
    patient_id = patient_id_from(path.stem, "the file name") or "unnamed"
    objects = _yolo_objects(_yolo_label_path(path)) if is_file(_yolo_label_path(path)) else []
    cand = Candidate(file=path, name=name, patient_id=patient_id, split=split)
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
            raise ValueError(f"{label_file.name}: {len(keypoints)} keypoint values; expected 23 x 3")
    return cand
