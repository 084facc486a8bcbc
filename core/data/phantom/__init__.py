"""Synthetic lateral cervical radiographs with ground truth (the embedded default data).

A phantom is built in three steps, one module each:

1. **Anatomy** (``anatomy``, one per patient, in millimetres, patient frame: ``u`` towards the face, ``v`` down):
   the cervical column is a curve whose tangent angle changes along its arc length, so the change between the C2
   and C7 inferior endplates *is* the requested C2–C7 Cobb angle; bones from the skull base to T2 around it.
2. **View** (``view``, one per image): pixel spacing, rotation, crop and frame shape, exposure, noise, blur,
   processing, collimation, borders, a side marker, burned-in text, a cross-table backboard, JPEG compression.
3. **Rendering** (``render``) as an X-ray projection: attenuation line integrals, transmission, scatter, noise,
   detector blur, log and a window/gamma LUT.

``cases`` puts them together into one image with its ground truth (23 CSXA landmarks, ROI box, class), which comes
from :mod:`core.data.measure`, so labels and measurements agree by construction. Everything is drawn facing right
and mirrored for ``facing="left"``. ``writers`` writes phantom sets (and ``dicom`` the DICOM files in them);
``geometry`` holds the shapes and the column curve they share. ``python -m core phantom`` is
``core.commands.phantom``.

This module is the package's interface: import from here, not from the modules.
"""
from core.data.phantom.cases import PROFILES, PhantomCase, PhantomError, case_landmarks, generate_case
from core.data.phantom.dicom import write_dicom
from core.data.phantom.render import attenuation, expose
from core.data.phantom.view import BURNED_IN_TEXT
from core.data.phantom.writers import (
    CSXA_CURVATURE_COLUMN,
    FORMATS,
    PNG_COMPRESS_LEVEL,
    contact_sheet,
    write_phantoms,
)

__all__ = [
    "BURNED_IN_TEXT",
    "CSXA_CURVATURE_COLUMN",
    "FORMATS",
    "PNG_COMPRESS_LEVEL",
    "PROFILES",
    "PhantomCase",
    "PhantomError",
    "attenuation",
    "case_landmarks",
    "contact_sheet",
    "expose",
    "generate_case",
    "write_dicom",
    "write_phantoms",
]
