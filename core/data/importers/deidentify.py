"""The one place a DICOM becomes what the workspace stores: its de-identified copy under the patient's pseudonym.

Every import path goes through here: ``import_dicom`` prepares each file with it, and the commit's check applies it
to any DICOM another importer (a folder, a manifest, YOLO, COCO, CSXA) happened to find.
"""
from __future__ import annotations

import hashlib
import hmac
import io

from core.data.deid import deidentify
from core.data.imaging import ImageReadError, read_dicom_dataset
from core.data.importers.entries import Candidate, read_input


def deidentified_copy(cand: Candidate, salt: bytes) -> None:
    """Read ``cand.file`` as DICOM and put its de-identified bytes and patient pseudonym on ``cand``;
    ValueError with the reason for a file that cannot or must not be stored."""
    deidentify_candidate(cand, read_input(cand.file), salt)


def deidentify_candidate(cand: Candidate, data: bytes, salt: bytes) -> None:
    """De-identify DICOM ``data`` onto ``cand``: its bytes, patient pseudonym, a pseudonymous source (the file name
    may name the patient) and ``.dcm``; ValueError with the reason for a file that cannot or must not be stored."""
    path = cand.file
    try:
        # A .dcm without the 128-byte preamble is still DICOM; anything else must carry the marker. The budgets
        # (pixels, declared and inflated bytes) apply before any pixel data is touched.
        ds = read_dicom_dataset(data, path.name, force=path.suffix.lower() in (".dcm", ".dicom"))
        burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
        has_pixels = "PixelData" in ds
    except ImageReadError:
        raise
    except Exception as error:  # pydicom raises many types for a damaged file, also when reading an element
        raise ValueError(f"not a readable DICOM file ({' '.join(str(error).split())[:200]})") from None
    if burned == "YES":
        raise ValueError("BurnedInAnnotation is YES: the pixels may show who the patient is; "
                         "remove the annotation before importing")
    if not has_pixels:
        raise ValueError("this DICOM holds no image: no pixel data (no PixelData element)")
    buffer = io.BytesIO()
    try:
        done = deidentify(ds, salt)
        ds.save_as(buffer, enforce_file_format=True)
    except Exception as error:  # pydicom raises several types for a dataset it cannot encode
        raise ValueError(f"cannot write the de-identified copy ({' '.join(str(error).split())[:200]})") from None
    cand.data, cand.patient_id, cand.suffix = buffer.getvalue(), done.pseudonym, ".dcm"
    cand.source = "dicom:" + hmac.new(salt, cand.name.encode(errors="replace"), hashlib.sha256).hexdigest()[:16]
    cand.meta["deidentified"] = True
    cand.meta["burned_in_annotation"] = done.burned_in_annotation
