"""A folder of films, classed by folder where it is a class-per-folder tree; JSON sidecars add patient and landmarks."""
from __future__ import annotations

import json
from pathlib import Path

from core.data.datasets import parse_class
from core.data.importers.commit import ImportReport, run_import
from core.data.importers.entries import (
    ProgressCallback,
    Candidate,
    image_files,
    labelme_landmarks,
    number_list,
    patient_id_from,
    relative_name,
    require_dir,
)
from core.data.store import AnnotationStore


def import_folder(src: str | Path, *, dataset: str | None = None, store: AnnotationStore | None = None,
                  annotator: str | None = None,
                  progress: ProgressCallback | None = None, origin: str | None = None) -> ImportReport:
    """A folder of films, classed by folder where it is a class-per-folder tree (``SRC/<class>/**/<image>``, class
    names or synonyms as folder names). Films in no class folder come in unlabeled, to be labeled on the Label
    page: that is how a team's own films usually arrive.

    A JSON sidecar ``<image stem>.json`` may give ``patient_id`` (else the file stem is the patient) and,
    when it is a Labelme file, the 23 landmarks.
    """
    src = require_dir(Path(src), "folder of films")
    candidates, skipped = [], []
    for path in image_files(src):
        name = relative_name(path, src)
        folders = path.relative_to(src).parts[:-1]
        curvature_class = next((parse_class(f) for f in reversed(folders) if parse_class(f)), None)
        cand = Candidate(file=path, name=name, patient_id=path.stem, curvature_class=curvature_class)
        sidecar = path.with_suffix(".json")
        try:
            cand.patient_id = patient_id_from(path.stem, "the file name") or "unnamed"
            if sidecar.exists():
                _apply_sidecar(cand, sidecar)
        except ValueError as error:
            skipped.append((name, str(error)))
            continue
        candidates.append(cand)
    report = run_import(candidates, skipped, source=src, kind="folder", dataset=dataset, store=store,
                         annotator=annotator, progress=progress, origin=origin)
    unlabeled = sum(1 for c in candidates if c.curvature_class is None)
    if unlabeled:
        report.notes.append(f"{unlabeled} film(s) in no class folder (normal, straightened, reversed or a synonym "
                            "such as lordotic, straight, kyphotic) came in unlabeled: label them on the Label page")
    return report


def _apply_sidecar(cand: Candidate, sidecar: Path) -> None:
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"sidecar {sidecar.name} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {sidecar.name} must hold a JSON object")
    cand.patient_id = patient_id_from(data.get("patient_id"), f"sidecar {sidecar.name}: patient_id") or cand.patient_id
    if data.get("roi_box") is not None:
        cand.roi_box = number_list(data["roi_box"], f"sidecar {sidecar.name}: roi_box")
    if "shapes" in data:
        cand.landmarks = labelme_landmarks(sidecar)
