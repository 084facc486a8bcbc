"""A COCO detection or keypoint file: boxes, class from the category name, landmarks from 23 keypoints."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import DatasetError, parse_class
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.entries import (
    ProgressCallback,
    Candidate,
    is_file,
    number_list,
    outside_upload,
    patient_id_from,
    require_dir,
    short_repr,
)
from core.data.store import SPLITS, AnnotationStore
from core.settings import CLASSES


def _coco_key(value: Any) -> int | str | None:
    """An id as COCO files use them (a whole number, sometimes text); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return value


def _coco_annotation(cand: Candidate, anns: list[dict], categories: dict) -> None:
    """The largest box of an image's annotations, its category and keypoints onto ``cand``; ValueError."""
    boxes = []
    for ann in anns:
        bbox = number_list(ann["bbox"], f"annotation {short_repr(ann.get('id'))}: bbox")
        if len(bbox) != 4:
            raise ValueError(f"annotation {short_repr(ann.get('id'))}: bbox must be [x, y, width, height], "
                             f"got {short_repr(ann['bbox'])}")
        x, y, w, h = bbox
        boxes.append((w * h, [x, y, x + w, y + h], ann))
    _, cand.roi_box, ann = max(boxes, key=lambda b: b[0])
    category = categories.get(_coco_key(ann.get("category_id")))
    cand.curvature_class = parse_class(category or "") or cand.curvature_class
    keypoints = ann.get("keypoints") or []
    if keypoints:
        values = number_list(keypoints, f"annotation {short_repr(ann.get('id'))}: keypoints")
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
    json_path, image_root, coco = _read_coco(Path(src), labels)
    skipped: list[tuple[str, str]] = []
    categories, by_image = _index_annotations(coco, skipped)
    candidates = []
    for number, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            skipped.append((f"images[{number}]", f"an image needs a file_name, got {short_repr(entry)}"))
            continue
        file_name = entry["file_name"]
        path = next((p for p in (image_root / file_name, image_root / "images" / file_name) if is_file(p)), None)
        if path is not None and outside_upload(path, image_root, origin):
            skipped.append((file_name, "the path leads outside the uploaded folder"))
            continue
        if path is None:
            skipped.append((file_name, "file not found"))
            continue
        try:
            candidates.append(_coco_candidate(path, entry, by_image, categories))
        except ValueError as error:
            skipped.append((file_name, str(error)))
    return run_import(candidates, skipped, source=Path(json_path), kind="coco", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)


def _read_coco(src: Path, labels: str | Path | None) -> tuple[Path, Path, dict]:
    """(annotation JSON, image folder, its content); DatasetError when there is no usable COCO file."""
    if src.is_file():
        json_path, image_root = src, src.parent
    else:
        image_root = require_dir(src, "COCO image folder")
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
    return json_path, image_root, coco


def _index_annotations(coco: dict, skipped: list[tuple[str, str]]) -> tuple[dict[Any, str], dict[Any, list[dict]]]:
    """(category id -> name, image id -> its annotations with a box); entries without an id go to ``skipped``."""
    categories: dict[Any, str] = {}
    for number, category in enumerate(coco.get("categories") or []):
        key = _coco_key(category.get("id")) if isinstance(category, dict) else None
        if key is None:
            skipped.append((f"categories[{number}]", f"a category needs an id, got {short_repr(category)}"))
        else:
            categories[key] = str(category.get("name") or "")
    by_image: dict[Any, list[dict]] = {}
    for number, ann in enumerate(coco.get("annotations") or []):
        key = _coco_key(ann.get("image_id")) if isinstance(ann, dict) else None
        if key is None:
            skipped.append((f"annotations[{number}]", f"an annotation needs an image_id, got {short_repr(ann)}"))
        elif ann.get("bbox"):
            by_image.setdefault(key, []).append(ann)
    return categories, by_image


def _coco_candidate(path: Path, entry: dict, by_image: dict, categories: dict) -> Candidate:
    """One image entry with CerviCurve's image-level fields and its annotations; ValueError with the reason."""
    patient_id = patient_id_from(entry.get("patient_id")) or patient_id_from(path.stem, "the file name") or "unnamed"
    split = entry.get("split")
    if split is not None and (not isinstance(split, str) or split not in SPLITS):
        raise ValueError(f"unknown split {short_repr(split)}; expected one of {', '.join(SPLITS)}")
    label = entry.get("curvature_class")
    if label is not None and (not isinstance(label, str) or label and parse_class(label) is None):
        raise ValueError(f"unknown curvature_class {short_repr(label)}; expected one of {', '.join(CLASSES)}")
    cand = Candidate(file=path, name=entry["file_name"], patient_id=patient_id, split=split,
                      curvature_class=parse_class(label or ""))
    anns = by_image.get(_coco_key(entry.get("id")), []) if _coco_key(entry.get("id")) is not None else []
    if anns:
        _coco_annotation(cand, anns, categories)
    return cand
