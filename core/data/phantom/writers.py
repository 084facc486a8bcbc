"""Phantom sets on disk: images, ``labels.jsonl`` and ``manifest.csv`` always, and the CSXA, YOLO and DICOM
layouts on request (docs/ARCHITECTURE.md, "Phantom output"); rendering spread over processes; a contact sheet."""
from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from core.data.measure import write_labelme
from core.data.phantom.cases import PhantomCase, PhantomError, check_size, generate_case
from core.data.phantom.dicom import write_dicom
from core.settings import CLASSES

FORMATS = ("csxa", "yolo", "dicom")
# CSXA curvature sheet codes (1 Lordotic, 2 Straight, 3 Sigmoid1, 4 Sigmoid2, 5 Kyphotic).
CSXA_CURVATURE_COLUMN = "Curvature: 1.Lordotic, 2.Straight, 3.Sigmoid1, 4.Sigmoid2, 5.Kyphotic"
CSXA_CODE = {"normal": 1, "straightened": 2, "reversed": 5}
CSXA_SIGMOID_CODE = {"sigmoid1": 3, "sigmoid2": 4}
PNG_COMPRESS_LEVEL = 1  # noisy radiographs barely compress further; level 6 takes twice as long


def _derived_seed(*keys: int) -> int:
    """A 32-bit seed from (set seed, patient, image): stable, independent streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _save_png(path: Path, case: PhantomCase) -> None:
    dpi = 25.4 / case.pixel_spacing_mm  # pHYs chunk: readers recover the pixel spacing
    Image.fromarray(case.image).save(path, dpi=(dpi, dpi), compress_level=PNG_COMPRESS_LEVEL)


def _render(job: tuple) -> PhantomCase:
    case_seed, size, cls, profile, bit_depth, patient_id, patient_seed, image_path, *_ = job
    case = generate_case(case_seed, size=size, curvature_class=cls, profile=profile, bit_depth=bit_depth,
                         patient_id=patient_id, patient_seed=patient_seed)
    _save_png(image_path, case)
    return case


def _rendered(jobs: list[tuple], workers: int):
    """The cases of ``jobs`` in order, rendered (and their PNGs saved) here or in ``workers`` processes."""
    if workers <= 1 or len(jobs) < 2 * workers:
        yield from map(_render, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may be a threaded server (Streamlit) or hold torch's thread pool
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_render, jobs, chunksize=8)


def _patient_plan(patients: int, seed: int, sigmoid_fraction: float) -> list[tuple[str, str]]:
    """(curvature class, profile) per patient: classes balanced and shuffled, some sigmoid shapes."""
    rng = np.random.default_rng([seed, 0x91A])
    classes = [CLASSES[i % len(CLASSES)] for i in range(patients)]
    rng.shuffle(classes)
    sigmoid = set(rng.permutation(patients)[: int(round(sigmoid_fraction * patients))].tolist())
    return [(cls, str(rng.choice(["sigmoid1", "sigmoid2"])) if i in sigmoid else "arc")
            for i, cls in enumerate(classes)]


def _validation_patients(plan: list[tuple[str, str]], seed: int, fraction: float) -> set[int]:
    """Patient indices for the YOLO val split, stratified by class; all images of a patient stay together."""
    rng = np.random.default_rng([seed, 0x7A1])
    chosen: set[int] = set()
    for cls in CLASSES:
        members = [i for i, (c, _) in enumerate(plan) if c == cls]
        if len(members) >= 2:
            count = max(1, int(round(fraction * len(members))))
            chosen.update(rng.permutation(members)[:count].tolist())
    return chosen


def write_phantoms(
    out: str | Path,
    patients: int,
    images_per_patient: int = 1,
    seed: int = 0,
    size: int = 1024,
    formats: tuple[str, ...] | list[str] = (),
    bit_depth: int = 8,
    progress: Callable[[int, int, PhantomCase], None] | None = None,
    *,
    sigmoid_fraction: float = 0.0,
    dicom_photometric: str = "MONOCHROME2",
    val_fraction: float = 0.2,
    overwrite: bool = False,
    workers: int = 1,
) -> dict:
    """Write a phantom set in the "Phantom output" layout of docs/ARCHITECTURE.md; returns a summary.

    Always: ``images/<P0001_01>.png``, ``labels.jsonl``, ``manifest.csv``. ``formats`` adds ``csxa``,
    ``yolo`` (train/val split by patient) and ``dicom``. One curvature per patient; its images vary
    pose, exposure, noise and crop. ``progress(done, total, case)`` is called after every image.
    ``workers`` > 1 renders in that many processes; the set written is the same byte for byte.
    """
    out = Path(out)
    formats = tuple(dict.fromkeys(formats))
    size = _check_request(formats, patients, images_per_patient, workers, size, bit_depth, sigmoid_fraction,
                          val_fraction, dicom_photometric)
    _clear_folder(out, overwrite)
    (out / "images").mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    plan = _patient_plan(patients, seed, sigmoid_fraction)
    val = _validation_patients(plan, seed, val_fraction)
    total = patients * images_per_patient
    writers = {name: factory(out / name) for name, factory in
               (("csxa", _CsxaWriter), ("yolo", _YoloWriter), ("dicom", _DicomWriter)) if name in formats}
    if "dicom" in writers:
        writers["dicom"].photometric = dicom_photometric
    classes: Counter = Counter()
    facings: Counter = Counter()
    hidden = done = 0
    with (out / "labels.jsonl").open("w", encoding="utf-8") as labels, \
            (out / "manifest.csv").open("w", newline="", encoding="utf-8") as manifest_file:
        manifest = csv.writer(manifest_file)
        manifest.writerow(["path", "label", "patient_id", "x1", "y1", "x2", "y2"])
        jobs = [(_derived_seed(seed, p_index, k + 1), size, cls, profile, bit_depth, f"P{p_index + 1:04d}",
                 _derived_seed(seed, p_index), out / "images" / f"P{p_index + 1:04d}_{k + 1:02d}.png", p_index, k)
                for p_index, (cls, profile) in enumerate(plan) for k in range(images_per_patient)]
        for job, case in zip(jobs, _rendered(jobs, workers)):
            _, _, cls, _, _, _, _, image_path, p_index, k = job
            name = image_path.stem
            classes[cls] += 1
            labels.write(json.dumps(case.as_label(f"images/{name}.png")) + "\n")
            manifest.writerow([f"images/{name}.png", case.curvature_class, case.patient_id,
                               *(f"{v:.2f}" for v in case.roi_box)])
            for writer in writers.values():
                writer.add(case, name, image_path, p_index, k, p_index in val)
            facings[case.facing] += 1
            hidden += case.c7_hidden
            done += 1
            if progress is not None:
                progress(done, total, case)
    files = {"images": total}
    for name, writer in writers.items():
        files[name] = writer.finish()
    return {
        "out": str(out), "patients": patients, "images": total, "classes": {c: classes[c] for c in CLASSES},
        "facing": dict(facings), "c7_hidden": hidden, "sigmoid_patients": sum(p != "arc" for _, p in plan),
        "formats": list(formats), "files": files, "size": size, "bit_depth": bit_depth, "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _check_request(formats, patients, images_per_patient, workers, size, bit_depth, sigmoid_fraction, val_fraction,
                   dicom_photometric) -> int:
    """PhantomError for an impossible set, before anything is written; returns the checked size."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise PhantomError(f"unknown format(s) {', '.join(map(repr, unknown))}; use {', '.join(FORMATS)}")
    for name, value, low in (("patients", patients, 1), ("images_per_patient", images_per_patient, 1),
                             ("workers", workers, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise PhantomError(f"{name} must be a whole number >= {low}, got {value!r}")
    if patients > 9999:
        raise PhantomError("at most 9999 patients per set (CSXA case numbers have four digits)")
    size = check_size(size)
    if bit_depth not in (8, 16):
        raise PhantomError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if not 0.0 <= sigmoid_fraction <= 1.0 or not 0.0 <= val_fraction < 1.0:
        raise PhantomError("sigmoid_fraction must lie in [0, 1] and val_fraction in [0, 1)")
    if dicom_photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhantomError(f"dicom_photometric must be MONOCHROME1 or MONOCHROME2, not {dicom_photometric!r}")
    return size


def _clear_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds a set unless ``overwrite``; then remove what a set writes (only that)."""
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a folder")
    written = ("images", "labels.jsonl", "manifest.csv") + FORMATS
    stale = [out / name for name in written if (out / name).exists()]
    if stale and not overwrite:
        raise PhantomError(f"{out} already holds a phantom set ({stale[0].name}); choose another folder, "
                           "or overwrite it (--overwrite)")
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


class _CsxaWriter:
    """CSXA layout: datasets-PNG/<NNNN>_<age>.png + Labelme JSON, datasets.xlsx and datasets.csv.

    One case number per patient (the importer links rows by number); a patient's further images
    are named <NNNN>_<age>_<k>.png so they stay with their case.
    """

    TITLE = "Cervical Spine X-ray Atlas (CSXA) layout - CerviCurve synthetic phantoms"
    HEADER = ["Number", "Age", "Sex", CSXA_CURVATURE_COLUMN, "Patient ID", "Cobb C2-C7 (deg)"]

    def __init__(self, root: Path):
        self.root = root
        (root / "datasets-PNG").mkdir(parents=True, exist_ok=True)
        self.rows: list[list] = []
        self.count = 0

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        number = p_index + 1
        stem = f"{number:04d}_{case.age}" + ("" if k == 0 else f"_{k + 1}")
        target = self.root / "datasets-PNG" / f"{stem}.png"
        shutil.copyfile(image_path, target)
        write_labelme(target.with_suffix(".json"), case.landmarks, target.name, (case.width, case.height))
        if k == 0:
            code = CSXA_SIGMOID_CODE.get(case.profile, CSXA_CODE[case.curvature_class])
            self.rows.append([number, case.age, case.sex, code, case.patient_id, round(case.cobb_c2c7, 2)])
        self.count += 1

    def finish(self) -> int:
        from openpyxl import Workbook

        book = Workbook()
        sheet = book.active
        sheet.title = "Sheet1"
        sheet.append([self.TITLE])
        sheet.append(self.HEADER)
        for row in self.rows:
            sheet.append(row)
        book.save(self.root / "datasets.xlsx")
        with (self.root / "datasets.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)  # the same sheet: title row, then the header
            writer.writerow([self.TITLE] + [""] * (len(self.HEADER) - 1))
            writer.writerow(self.HEADER)
            writer.writerows(self.rows)
        return self.count


class _YoloWriter:
    """Ultralytics detect layout, one class (cervical_spine), train/val split by patient."""

    def __init__(self, root: Path):
        self.root = root
        for split in ("train", "val"):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        self.counts = Counter()

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        split = "val" if is_val else "train"
        shutil.copyfile(image_path, self.root / "images" / split / f"{name}.png")
        x1, y1, x2, y2 = case.roi_box
        w, h = case.width, case.height
        line = f"0 {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        (self.root / "labels" / split / f"{name}.txt").write_text(line, encoding="utf-8")
        self.counts[split] += 1

    def finish(self) -> int:
        (self.root / "data.yaml").write_text(
            f"path: {self.root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: cervical_spine\n",
            encoding="utf-8")
        return sum(self.counts.values())


class _DicomWriter:
    """CR DICOM files with fake, realistic-looking patient data, to exercise de-identification."""

    photometric = "MONOCHROME2"

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, case: PhantomCase, name: str, image_path: Path, p_index: int, k: int, is_val: bool) -> None:
        write_dicom(self.root / f"{name}.dcm", case, photometric=self.photometric, instance=k + 1)
        self.count += 1

    def finish(self) -> int:
        return self.count

# --- contact sheet --------------------------------------------------------------------------------------


def contact_sheet(out_png: str | Path, seed: int = 0, size: int = 512) -> Path:
    """One phantom per class (columns) and facing (rows), with ROI box and landmarks drawn."""
    from PIL import ImageFont

    font = ImageFont.load_default()
    cell = size
    sheet = Image.new("RGB", (cell * len(CLASSES), cell * 2), (32, 32, 32))
    for row, facing in enumerate(("right", "left")):
        for column, cls in enumerate(CLASSES):
            case = generate_case(_derived_seed(seed, column, row), size=size, curvature_class=cls, facing=facing)
            tile = Image.fromarray(case.image).convert("RGB")
            draw = ImageDraw.Draw(tile)
            draw.rectangle(case.roi_box, outline=(60, 220, 90), width=2)
            radius = max(2, size // 170)
            for i, (x, y) in enumerate(case.landmarks):
                colour = (255, 200, 0) if i == 0 else (255, 60, 60)
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
            caption = f"{cls}  Cobb {case.cobb_c2c7:+.1f} deg  facing {facing}"
            caption += "  C7 hidden" if case.c7_hidden else ""
            draw.rectangle([0, tile.height - 16, tile.width, tile.height], fill=(0, 0, 0))
            draw.text((4, tile.height - 14), caption, fill=(255, 255, 255), font=font)
            sheet.paste(tile, (column * cell + (cell - tile.width) // 2, row * cell))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
