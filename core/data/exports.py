"""Export a dataset of the annotation store: YOLO (detect or pose, optionally ROI-cropped), class folders,
CSV manifest, COCO, CSXA-style Labelme.

Also the ROI-crop window of a landmark export (``landmark_crop_window``, ``crop_window``), which the landmark
models cut the same way at prediction time.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.data.datasets import SPINE_NAME, DatasetError, image_path, labeled_images
from core.data.imaging import ImageReadError, read_image, to_uint8
from core.data.measure import LANDMARK_CROP_MARGIN, landmark_flip_index
from core import settings
from core.settings import CLASSES
from core.data.store import AnnotationStore, LabeledImage, check_dataset_name

# A landmark export cropped to the ROI widens the box by this fraction of its width/height on each side,
# so a detector box that is a little off still holds every landmark (the ROI box of
# ``roi_box_from_landmarks`` already leaves 12 % around C2-C7).


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


def _export_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} is not an empty folder; export into a new one so no stale files mix in")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _stem(item: LabeledImage) -> str:
    return f"{item.image_id:06d}"


def _items(dataset: str, store: AnnotationStore | None) -> list[LabeledImage]:
    check_dataset_name(dataset)  # a name that was imported before names were checked is refused here too
    return labeled_images(dataset, store)


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|..., @SUM(...));
# tab and CR too (OWASP "CSV injection"). A number such as -3.2 is data, not a formula, and stays as it is.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a text cell starting with ``= + - @``, tab or CR gets a leading ``'``
    (OWASP); numbers, and text that is a plain number, are kept."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class SafeCsvWriter:
    """``csv.writer`` whose rows go through :func:`spreadsheet_safe`: every CSV CerviCurve writes for people."""

    def __init__(self, handle, **options):
        self._writer = csv.writer(handle, **options)

    def writerow(self, row: Sequence[Any]) -> Any:
        return self._writer.writerow([spreadsheet_safe(v) for v in row])


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
    items = _items(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    for item in items:
        if item.roi_box is None:
            report.skipped.append((item.path, "no ROI box"))
            continue
        if task == "landmarks" and item.landmarks is None:
            report.skipped.append((item.path, "no landmarks"))
            continue
        if not item.split:  # as the trainers do: an image without a split is left out, and said so
            report.skipped.append((item.path, "no split (python -m core split --dataset ...)"))
            continue
        split = item.split
        try:
            radiograph = read_image(image_path(item))
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
        reasons = sorted({reason for _, reason in report.skipped})
        raise DatasetError(f"dataset {dataset!r} has no images to export with "
                           + ("a box" if task == "detect" else "box and landmarks")
                           + (f" (skipped: {'; '.join(reasons)})" if reasons else ""))
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
    items = _items(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    for item in items:
        if item.curvature_class is None:
            report.skipped.append((item.path, "no curvature class"))
            continue
        try:
            radiograph = read_image(image_path(item))
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
    items = _items(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    (out / "images").mkdir()
    with (out / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = SafeCsvWriter(handle)
        writer.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2", "split"])
        for item in items:
            relative = f"images/{_stem(item)}{Path(item.path).suffix}"
            shutil.copyfile(image_path(item), out / relative)
            box = [f"{v:.2f}" for v in item.roi_box] if item.roi_box else ["", "", "", ""]
            writer.writerow([relative, item.curvature_class or "", item.patient_id, *box, item.split or ""])
            report.written += 1
    return report


def export_coco(dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """``OUT/annotations.json`` + ``OUT/images/<id>.png``: categories are the classes (and ``cervical_spine``
    for a box without a class), keypoints the 23 landmarks."""
    from core.data.measure import LANDMARK_NAMES

    items = _items(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    categories = [{"id": i + 1, "name": name, "supercategory": SPINE_NAME, "keypoints": list(LANDMARK_NAMES),
                   "skeleton": []} for i, name in enumerate((*CLASSES, SPINE_NAME))]
    category_id = {c["name"]: c["id"] for c in categories}
    coco: dict[str, Any] = {"info": {"description": f"CerviCurve dataset {dataset}"}, "images": [],
                            "annotations": [], "categories": categories}
    for item in items:
        try:
            radiograph = read_image(image_path(item))
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


def export_labelme(dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """CSXA's layout: ``OUT/datasets-PNG/<stem>.png`` with a same-stem Labelme JSON of the 23 named points
    (missing ones left out, as CSXA does), and ``OUT/datasets.csv`` (Number, patient_id, split, curvature class,
    CSXA grade 1 Lordotic / 2 Straight / 5 Kyphotic under CSXA's column heading, ROI box)."""
    from core.data.measure import write_labelme

    grades = {"normal": 1, "straightened": 2, "reversed": 5}
    items = _items(dataset, store)
    out = _export_dir(out)
    report = ExportReport(out=out)
    folder = out / "datasets-PNG"
    folder.mkdir()
    with (out / "datasets.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = SafeCsvWriter(handle)
        writer.writerow(["Number", "patient_id", "split", "curvature_class",
                         "Curvature: 1.Lordotic, 2.Straight, 3.Sigmoid1, 4.Sigmoid2, 5.Kyphotic", "x1", "y1", "x2", "y2"])
        for item in items:
            if item.landmarks is None and item.curvature_class is None:
                report.skipped.append((item.path, "no landmarks and no class"))
                continue
            try:
                radiograph = read_image(image_path(item))
            except ImageReadError as error:
                report.skipped.append((item.path, str(error)))
                continue
            stem = f"{item.image_id:04d}"
            _write_png(radiograph.pixels, folder / f"{stem}.png")
            if item.landmarks is not None:
                write_labelme(folder / f"{stem}.json", item.landmarks, f"{stem}.png", (item.width, item.height))
            box = [f"{v:.2f}" for v in item.roi_box] if item.roi_box else ["", "", "", ""]
            writer.writerow([stem, item.patient_id, item.split or "", item.curvature_class or "",
                             grades.get(item.curvature_class or "", ""), *box])
            report.written += 1
    return report


# ---------------------------------------------------------------- the Data page's export

# Every export the pages offer (Data: as a zip download; Label: into a folder), one vocabulary:
# kind -> (export function, YOLO task). The CLI's `export yolo --task detect|landmarks` is the same two YOLO kinds.
EXPORT_KINDS = {"folder": (export_folder, None), "csv": (export_csv, None), "yolo-detect": (export_yolo, "detect"),
                "yolo-pose": (export_yolo, "landmarks"), "coco": (export_coco, None), "labelme": (export_labelme, None)}


def export_to(kind: str, dataset: str, out: str | Path, *, store: AnnotationStore | None = None) -> ExportReport:
    """``dataset`` exported as ``kind`` into the folder ``out`` (no permission check: the caller's)."""
    if kind not in EXPORT_KINDS:
        raise DatasetError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    export, task = EXPORT_KINDS[kind]
    return export(dataset, out, store=store) if task is None else export(dataset, out, task, store=store)


def export_archive(kind: str, dataset: str, *, store: AnnotationStore | None = None,
                   actor=None) -> tuple[Path, ExportReport]:
    """Export ``dataset`` as a zip in the workspace's ``exports/`` (the folder it was made in is removed); returns
    the zip and the report. Patients' images leave the app this way: an admin's action in team mode
    (``core.data.accounts.authorize``, audited), anyone's in single-user mode."""
    from datetime import datetime

    from core.data.accounts import authorize

    if kind not in EXPORT_KINDS:
        raise DatasetError(f"unknown export kind {kind!r}; expected one of {', '.join(EXPORT_KINDS)}")
    authorize(actor, "export", f"{kind} export of dataset {dataset!r}", url=store.url if store is not None else None)
    check_dataset_name(dataset)  # the name becomes the zip's name: never a path
    out = settings.exports_dir() / f"{dataset}-{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    try:
        report = export_to(kind, dataset, out, store=store)
        archive = Path(shutil.make_archive(str(out), "zip", root_dir=out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return archive, report
