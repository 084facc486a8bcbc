"""The YOLO dataset yaml a run trains on, and pose labels read back for the landmark errors.

Landmarks and flips: CSXA names left/right by image side, so a horizontal flip turns "C4 top left" into
"C4 top right". Flip augmentation stays on (it teaches both facings) and ``flip_idx`` swaps each left/right pair;
it is derived from ``core.data.measure.LANDMARK_NAMES`` and always overrides what a dataset yaml says.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.data import safe_yaml
from core.data.measure import landmark_flip_index

LANDMARK_COUNT = 23
KPT_SHAPE = [LANDMARK_COUNT, 3]


def _split_dirs(root: Path, value) -> list[Path]:
    entries = value if isinstance(value, (list, tuple)) else [value]
    return [Path(e) if Path(e).is_absolute() else root / str(e) for e in entries]


def load_dataset_yaml(data_yaml: str | Path) -> tuple[dict, Path]:
    import yaml

    path = Path(data_yaml).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"dataset description {path} not found (expected a YOLO data.yaml)")
    try:
        data = safe_yaml.load(path.read_text(encoding="utf-8"))  # a user's data.yaml: no aliases (alias bomb)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a mapping with train, val and names")
    root = Path(str(data.get("path") or path.parent)).expanduser()
    if not root.is_absolute():
        root = path.parent / root
    return data, root.resolve()


def write_dataset_yaml(data_yaml: str | Path, out: Path, yolo_task: str) -> Path:
    """A clean copy of the dataset yaml: absolute path, existing folders, our kpt_shape/flip_idx, no `download`.

    Ultralytics runs a yaml's `download:` entry (a URL, a shell command or Python) when a split is missing; the copy
    never carries one and missing folders are an error here instead.
    """
    import yaml

    data, root = load_dataset_yaml(data_yaml)
    clean: dict[str, Any] = {"path": str(root)}
    for split in ("train", "val", "test"):
        value = data.get(split)
        if value in (None, "", []):
            if split != "test":
                raise ValueError(f"{data_yaml}: no '{split}' images listed")
            continue
        for folder in _split_dirs(root, value):
            if not folder.exists():
                raise FileNotFoundError(
                    f"{split} images {folder} not found (listed in {data_yaml}; CerviCurve never runs a dataset's "
                    f"download script)"
                )
        clean[split] = value
    names = data.get("names")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{data_yaml}: 'names' must list the class names, e.g. {{0: cervical_spine}}")
    clean["names"] = {int(k): str(v) for k, v in names.items()}
    if yolo_task == "pose":
        kpt_shape = list(data.get("kpt_shape") or KPT_SHAPE)
        if kpt_shape != KPT_SHAPE:
            raise ValueError(f"{data_yaml}: kpt_shape must be {KPT_SHAPE} (the 23 CSXA landmarks), not {kpt_shape}")
        clean["kpt_shape"] = KPT_SHAPE
        clean["flip_idx"] = landmark_flip_index()
    elif data.get("kpt_shape"):
        raise ValueError(f"{data_yaml} holds landmarks (kpt_shape); export it with task='detect' for the detector")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(clean, sort_keys=False), encoding="utf-8")
    return out



def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img, dtype=np.float32)
            return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0, 1).astype(np.float32)
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_yolo_landmarks(data_yaml, split: str = "val") -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, landmarks (23, 2) in pixels, nan where not visible) for every labelled image of a pose split."""
    data, root = load_dataset_yaml(data_yaml)
    if not data.get(split):
        raise ValueError(f"{data_yaml} has no '{split}' split")
    items = []
    for folder in _split_dirs(root, data[split]):
        for image_path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            parts = list(image_path.parts)
            where = len(parts) - 1 - parts[::-1].index("images")  # Ultralytics: last /images/ -> /labels/
            label = Path(*parts[:where], "labels", *parts[where + 1:]).with_suffix(".txt")
            if not label.is_file() or not label.read_text().strip():
                continue
            values = np.array(label.read_text().split("\n")[0].split(), dtype=np.float64)
            if values.size != 5 + 3 * LANDMARK_COUNT:
                raise ValueError(f"{label}: expected 5 + 3 x {LANDMARK_COUNT} numbers, found {values.size}")
            image = _read_gray(image_path)
            height, width = image.shape
            kpts = values[5:].reshape(LANDMARK_COUNT, 3)
            landmarks = kpts[:, :2] * [width, height]
            landmarks[kpts[:, 2] <= 0] = np.nan
            items.append((image, landmarks))
    return items
