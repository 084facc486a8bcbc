"""The CSXA layout: images, same-stem Labelme JSON and the curvature sheet (``datasets.xlsx`` or ``.csv``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import DatasetError
from core.data.imaging import ImageReadError, read_image
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.entries import (
    ProgressCallback,
    Candidate,
    image_files,
    labelme_landmarks,
    relative_name,
    require_dir,
)
from core.data.store import AnnotationStore

CSXA_GRADES = {1: "normal", 2: "straightened", 5: "reversed"}  # 3 Sigmoid1, 4 Sigmoid2: not one of the three
CSXA_CURVATURE_HEADER = "curvature"  # the column is headed "Curvature: 1.Lordotic, 2.Straight, ..."


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
    if sigmoid not in ("skip", "measure"):
        raise DatasetError(f"sigmoid must be 'skip' or 'measure', got {sigmoid!r}")
    src = require_dir(Path(src), "CSXA folder")
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
    for path in image_files(image_dir):
        name = relative_name(path, src)
        number = csxa_case_number(path.stem, cases)
        if number is None:
            skipped.append((name, _no_case_reason(path.stem, Path(sheet).name)))
            continue
        json_path = path.with_suffix(".json") if path.with_suffix(".json").is_file() else labelme.get(path.stem)
        landmarks = None
        if json_path is not None:
            try:
                landmarks = labelme_landmarks(json_path)
            except ValueError as error:
                skipped.append((name, str(error)))
                continue
        found = _graded_candidate(path, name, number, cases[number], landmarks, sigmoid)
        if isinstance(found, str):
            skipped.append((name, found))
        else:
            candidates.append(found)
    return run_import(candidates, skipped, source=src, kind="csxa", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin)


def _no_case_reason(stem: str, sheet_name: str) -> str:
    """Why a file name gives no case number of the sheet."""
    match = re.match(r"\d+", stem)
    run = match.group() if match else ""
    return ("file name does not start with a case number" if not run else
            f"case {int(run[:4])} is not in {sheet_name} (nor case {int(run)})" if len(run) > 4 else
            f"case {int(run)} is not in {sheet_name}")


def _graded_candidate(path: Path, name: str, number: int, case: dict, landmarks, sigmoid: str) -> Candidate | str:
    """The candidate for a case's image with its class from the sheet's grade, or the reason it is skipped.

    A reason, not a ValueError: only these reasons skip a file; any other error (a bad threshold setting met while
    measuring a sigmoid neck) still stops the import."""
    from core.data.measure import LandmarkError, measure_landmarks, read_facing

    grade = case["grade"]
    meta = {"csxa": {"number": number, "curvature_grade": grade,
                     **{k: case[k] for k in ("age", "sex") if case.get(k) is not None}}}
    if grade is None and landmarks is not None:
        # no grade in the sheet: the landmarks still teach the detector and the landmark model
        curvature_class = None
    elif grade in CSXA_GRADES:
        curvature_class = CSXA_GRADES[grade]
    elif grade in (3, 4) and sigmoid == "skip":
        return (f"sigmoid curvature (grade {grade}) is not one of the three classes; "
                "import with sigmoid='measure' to class it by its Cobb angle")
    elif grade in (3, 4):
        if landmarks is None:
            return f"sigmoid curvature (grade {grade}) needs landmarks to be measured; none found"
        try:
            facing = read_facing(read_image(path).pixels, landmarks).facing  # the lean flips on some necks
            curvature_class = measure_landmarks(landmarks, facing=facing).rule_class
        except (LandmarkError, ImageReadError) as error:
            return f"sigmoid curvature (grade {grade}) cannot be measured: {error}"
        meta["csxa"]["class_from"] = "cobb rule"
    else:
        return f"curvature grade {grade!r} in the sheet is not 1-5"
    return Candidate(file=path, name=name, patient_id=f"{number:04d}", curvature_class=curvature_class,
                      landmarks=landmarks, box_from_landmarks=True, meta=meta)
