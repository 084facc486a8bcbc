"""A CSV manifest ``path,label,patient_id[,x1,y1,x2,y2][,split]``; its reader serves the DICOM importer's labels too."""
from __future__ import annotations

import csv
from pathlib import Path

from core.data.datasets import DatasetError, parse_class
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.entries import ProgressCallback, Candidate, is_file, outside_upload, patient_id_from, short_repr
from core.data.store import SPLITS, AnnotationStore, validate_box
from core.settings import CLASSES


def read_manifest(csv_path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
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
        where = f"{csv_path.name} line {number} ({short_repr(row.get('path'))[1:-1] if row.get('path') else 'no path'})"
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
            patient_id = patient_id_from(row.get("patient_id"))
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
    rows, skipped = read_manifest(csv_path)
    candidates = []
    for row in rows:
        path = Path(row["path"])
        path = path if path.is_absolute() else csv_path.parent / path
        if outside_upload(path, csv_path.parent, origin):
            skipped.append((row["where"], "the path leads outside the uploaded folder"))
            continue
        if not is_file(path):
            skipped.append((row["where"], f"file not found: {path}"))
            continue
        try:
            patient_id = row["patient_id"] or patient_id_from(path.stem, "the file name") or "unnamed"
        except ValueError as error:
            skipped.append((row["where"], str(error)))
            continue
        candidates.append(Candidate(file=path, name=row["where"], patient_id=patient_id,
                                     curvature_class=row["class"], roi_box=row["box"], split=row["split"]))
    return run_import(candidates, skipped, source=csv_path, kind="csv", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)
