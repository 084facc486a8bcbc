"""Importing by kind (the ``import`` command's first argument), from a folder or from a zip of one."""
from __future__ import annotations

from pathlib import Path

from core.data.datasets import DatasetError
from core.data.importers.coco import import_coco
from core.data.importers.commit import ImportReport
from core.data.importers.csv_manifest import import_csv
from core.data.importers.csxa import import_csxa
from core.data.importers.dicom import import_dicom
from core.data.importers.entries import ProgressCallback
from core.data.importers.folder import import_folder
from core.data.importers.yolo import import_yolo
from core.data.store import AnnotationStore

IMPORTERS = ("folder", "csv", "yolo", "coco", "csxa", "dicom")


def _import_kind(kind: str, source: Path, labels: Path | None, *, sigmoid: str = "skip", resplit: bool = False,
                 **options) -> ImportReport:
    """Import a folder (or a CSV, COCO JSON, data.yaml) of the ``kind`` layout, not a zip."""
    if kind == "folder":
        return import_folder(source, **options)
    if kind == "csv":
        return import_csv(source, resplit=resplit, **options)
    if kind == "yolo":
        return import_yolo(labels or source, resplit=resplit, **options)
    if kind == "coco":
        return import_coco(source, labels, resplit=resplit, **options)
    if kind == "csxa":
        return import_csxa(source, labels, sigmoid=sigmoid, **options)
    if kind == "dicom":
        return import_dicom(source, labels, resplit=resplit, **options)
    raise DatasetError(f"unknown import kind {kind!r}; expected one of {', '.join(IMPORTERS)}")


def import_path(kind: str, source: str | Path, labels: str | Path | None = None, **options) -> ImportReport:
    """Import ``source``, a folder or file of the ``kind`` layout or a .zip of one (``python -m core import``)."""
    source, labels = Path(source), Path(labels) if labels else None
    if source.suffix.lower() == ".zip" and not source.is_dir():
        return import_archive(kind, source, labels, **options)
    return _import_kind(kind, source, labels, **options)


def import_archive(kind: str, archive: str | Path | bytes, labels: str | Path | None = None, *,
                   name: str | None = None, sigmoid: str = "skip", dataset: str | None = None,
                   store: AnnotationStore | None = None, annotator: str | None = None,
                   progress: ProgressCallback | None = None, resplit: bool = False) -> ImportReport:
    """Import a zip (a path, or an upload's bytes with its file ``name``) holding a ``kind`` layout.

    The zip is extracted safely (``core.data.archive.extract_zip``) into a temporary folder inside the
    workspace, the import root found by ``core.data.archive.import_source``, and the folder deleted afterwards,
    also on failure. ``dataset`` defaults to the archive's name without ``.zip``; stored sources and the
    report say ``<name>.zip/<path inside>``. Raises ``core.data.archive.ArchiveError`` for a refused archive.
    """
    from core.data.archive import extract_zip, import_source, scratch_folder

    if isinstance(archive, (bytes, bytearray)):
        if not name:
            raise DatasetError("an archive given as bytes needs its file name")
    else:
        archive = Path(archive)
        if not archive.is_file():
            raise DatasetError(f"archive {archive} not found")
        name = name or archive.name
    with scratch_folder("import") as scratch:
        extract_zip(archive, scratch)
        root = import_source(kind, scratch)
        folder = root if root.is_dir() else root.parent
        origin = "/".join((name, *folder.relative_to(scratch).parts))
        report = _import_kind(kind, root, Path(labels) if labels else None, sigmoid=sigmoid, resplit=resplit,
                              dataset=dataset or Path(name).stem, store=store, annotator=annotator,
                              progress=progress, origin=origin)

        def plain(text: str) -> str:  # reasons may name the scratch folder, which is gone once this returns
            return text.replace(str(folder), origin).replace(str(scratch), name)

        report.skipped = [(plain(file), plain(reason)) for file, reason in report.skipped]
        return report
