"""Import images and labels into the annotation store: class folders, CSV manifest, YOLO, COCO, CSXA, DICOM
(de-identified by ``core.data.deid``) and zips of any of them.

One module per layout (``folder``, ``csv_manifest``, ``yolo``, ``coco``, ``csxa``, ``dicom``) finds the images and
what the source says about them, as candidates (``entries``); every one ends in ``commit``, the one write path:
each image read and each label validated before anything is written, then one transaction (its docstring says how
an import never half-writes and how splits stay per patient). ``deidentify`` turns any DICOM, whichever importer
found it, into its de-identified copy. ``dispatch`` picks the importer by kind and unpacks zips (``import_path`` is
``python -m core import``), ``uploads`` serves the Data page.

Every entry is checked for its types and values and a bad one is skipped with ``file: reason``; only a source that
cannot be used at all (no folder, an unreadable manifest) is a ``DatasetError``.

This module is the package's interface: import from here, not from the modules.
"""
from core.data.importers.coco import import_coco
from core.data.importers.commit import ImportReport, sweep_partial_images
from core.data.importers.csv_manifest import import_csv
from core.data.importers.csxa import CSXA_GRADES, csxa_case_number, import_csxa, read_csxa_sheet
from core.data.importers.dicom import import_dicom
from core.data.importers.dispatch import IMPORTERS, import_archive, import_path
from core.data.importers.entries import ProgressCallback
from core.data.importers.folder import import_folder
from core.data.importers.uploads import import_phantoms, import_uploads
from core.data.importers.yolo import import_yolo

__all__ = [
    "CSXA_GRADES",
    "IMPORTERS",
    "ImportReport",
    "ProgressCallback",
    "csxa_case_number",
    "import_archive",
    "import_coco",
    "import_csv",
    "import_csxa",
    "import_dicom",
    "import_folder",
    "import_path",
    "import_phantoms",
    "import_uploads",
    "import_yolo",
    "read_csxa_sheet",
    "sweep_partial_images",
]
