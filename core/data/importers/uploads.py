"""What the Data page hands over: uploaded files (a zip of a layout, or DICOM files and zips of them) and phantom
requests; each checked against the acting user's role first."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from core.data.datasets import DatasetError
from core.data.importers.commit import ImportReport
from core.data.importers.csxa import import_csxa
from core.data.importers.dicom import import_dicom
from core.data.importers.dispatch import import_archive
from core.data.importers.entries import ProgressCallback
from core.data.store import AnnotationStore


def import_uploads(kind: str, files: Sequence[tuple[str, bytes]], *, dataset: str,
                   store: AnnotationStore | None = None, progress: ProgressCallback | None = None,
                   resplit: bool = False, actor=None) -> ImportReport:
    """What an upload widget received: one zip of a ``kind`` layout, or (``dicom``) DICOM files and zips of them.

    Files are unpacked into a scratch folder inside the workspace (deleted afterwards, also on failure); two uploads
    with the same name are kept apart; report lines name the uploads, never the scratch folder.
    """
    from core.data.accounts import authorize
    from core.data.archive import extract_zip, scratch_folder

    authorize(actor, "import", f"{kind} upload into {dataset}", url=store.url if store is not None else None)
    if not files:
        raise DatasetError("nothing was uploaded")
    if kind != "dicom":
        if len(files) != 1 or not files[0][0].lower().endswith(".zip"):
            raise DatasetError(f"a {kind} import is one .zip file")
        name, data = files[0]
        return import_archive(kind, data, name=Path(name).name, dataset=dataset, store=store, progress=progress,
                              resplit=resplit)
    with scratch_folder("upload") as scratch:
        for number, (name, data) in enumerate(files, start=1):
            # IM0001.dcm from two studies: the second gets a folder of its own
            name = Path(name).name or f"upload-{number}"
            target = scratch / name if not (scratch / name).exists() else scratch / f"upload-{number}" / name
            if name.lower().endswith(".zip"):
                extract_zip(data, target.with_suffix(""))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        report = import_dicom(scratch, dataset=dataset, store=store, progress=progress, resplit=resplit)
        report.skipped = [(file.replace(f"{scratch}/", ""), reason.replace(f"{scratch}/", ""))
                          for file, reason in report.skipped]
        return report


def import_phantoms(dataset: str, *, store: AnnotationStore | None = None, progress: ProgressCallback | None = None,
                    actor=None, **phantom_options) -> ImportReport:
    """Generate phantoms (``core.data.phantom.write_phantoms`` options) and import them with their full truth."""
    from core.data.accounts import authorize
    from core.data.archive import scratch_folder
    from core.data.phantom import write_phantoms

    authorize(actor, "import", f"phantoms into {dataset}", url=store.url if store is not None else None)
    with scratch_folder("phantoms") as scratch:
        def generated(done: int, total: int, case) -> None:
            if progress is not None:
                progress(done, total, f"phantom {done}/{total}")

        # The CSXA layout carries class, landmarks (hence the box) and patient: everything a phantom knows.
        write_phantoms(scratch, formats=("csxa",), progress=generated, **phantom_options)
        return import_csxa(scratch / "csxa", dataset=dataset, store=store, progress=progress)
