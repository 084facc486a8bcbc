"""A folder of DICOM files, de-identified on import, with an optional CSV manifest of labels."""
from __future__ import annotations

from pathlib import Path

from core import settings
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.csv_manifest import read_manifest
from core.data.importers.deidentify import deidentified_copy
from core.data.importers.entries import ProgressCallback, Candidate, relative_name, require_dir
from core.data.store import AnnotationStore


def import_dicom(src: str | Path, labels: str | Path | None = None, *, dataset: str | None = None,
                 store: AnnotationStore | None = None, annotator: str | None = None,
                 progress: ProgressCallback | None = None, origin: str | None = None,
                 resplit: bool = False) -> ImportReport:
    """A folder of DICOM files, de-identified on import (the workspace only ever holds the de-identified copy).

    ``labels`` is an optional manifest (``path,label[,x1,y1,x2,y2][,split]``) matched by relative path or file
    stem; its patient ids are ignored: the patient is the salted pseudonym of the DICOM PatientID.
    """
    src = require_dir(Path(src), "DICOM folder")
    salt = settings.pseudonym_salt()
    by_key: dict[str, dict] = {}
    skipped: list[tuple[str, str]] = []
    if labels is not None:
        rows, skipped = read_manifest(Path(labels))
        for row in rows:
            by_key.setdefault(Path(row["path"]).as_posix(), row)
            by_key.setdefault(Path(row["path"]).stem, row)
    candidates = []
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() not in (".json", ".csv", ".txt", ".yaml", ".xlsx", ".md"))
    for path in files:
        name = relative_name(path, src)
        row = by_key.get(name) or by_key.get(path.stem) or {}
        # The source is set pseudonymous by deidentify_candidate: the file name may carry a name or a date.
        cand = Candidate(file=path, name=name, patient_id="", curvature_class=row.get("class"),
                          roi_box=row.get("box"), split=row.get("split"), suffix=".dcm",
                          meta={"deidentified": True})
        # Reading and de-identifying is the slow part: it runs while _commit checks (and reports progress).
        cand.prepare = lambda cand=cand: deidentified_copy(cand, salt)
        candidates.append(cand)
    return run_import(candidates, skipped, source=src, kind="dicom", dataset=dataset, store=store,
                       annotator=annotator, progress=progress, origin=origin, resplit=resplit)
