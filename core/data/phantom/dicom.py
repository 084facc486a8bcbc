"""A phantom as a Computed Radiography DICOM file with fake, realistic-looking patient data: the input that
exercises de-identification on import."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.phantom.cases import PhantomCase, PhantomError


def write_dicom(path: str | Path, case: PhantomCase, *, photometric: str = "MONOCHROME2", instance: int = 1) -> None:
    """One phantom as a Computed Radiography DICOM file (explicit VR little endian).

    16-bit phantoms are stored as 12-bit values (BitsStored 12) with a window; MONOCHROME1 stores
    inverted values, as many CR/DR systems do. UIDs derive from the phantom's seeds: reruns match.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, \
        generate_uid

    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise PhantomError(f"photometric must be MONOCHROME1 or MONOCHROME2, not {photometric!r}")
    if case.bit_depth == 16:
        stored, bits = (case.image >> 4).astype(np.uint16), 12  # a 12-bit detector in a 16-bit word
    else:
        stored, bits = case.image.astype(np.uint8), 8
    peak = (1 << bits) - 1
    if photometric == "MONOCHROME1":
        stored = (peak - stored).astype(stored.dtype)
    rng = np.random.default_rng([case.patient_seed, 0xD1C])
    study_year = 2024
    birth = f"{study_year - case.age}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study_date = f"{study_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    number = case.patient_id.lstrip("P") or "0"
    study_uid = generate_uid(entropy_srcs=["cervicurve-phantom-study", str(case.patient_seed)])
    series_uid = generate_uid(entropy_srcs=["cervicurve-phantom-series", str(case.patient_seed), str(case.seed)])
    sop_uid = generate_uid(entropy_srcs=["cervicurve-phantom-image", str(case.patient_seed), str(case.seed)])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{9 + int(rng.integers(0, 8)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.AccessionNumber = f"PH{number}{instance:02d}"
    ds.Modality = "CR"
    ds.Manufacturer = "CerviCurve phantom generator"
    ds.InstitutionName = "Phantom General Hospital"
    ds.InstitutionAddress = "1 Synthetic Way, Nowhere"
    ds.ReferringPhysicianName = "Phantom^Referrer"
    ds.OperatorsName = "Phantom^Radiographer"
    ds.StudyDescription = "C-SPINE LATERAL"
    ds.SeriesDescription = "LAT C-SPINE"
    ds.PatientName = f"Phantom^{case.patient_id}"
    ds.PatientID = case.patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = case.sex
    ds.PatientAge = f"{case.age:03d}Y"
    ds.PatientAddress = f"{int(rng.integers(1, 200))} Phantom Street, Testville"
    ds.PatientTelephoneNumbers = f"555-{int(rng.integers(0, 10000)):04d}"
    ds.BodyPartExamined = "CSPINE"
    ds.ViewPosition = "LL" if case.facing == "right" else "RL"
    ds.PatientOrientation = ["A", "F"] if case.facing == "right" else ["P", "F"]
    ds.StudyID = number
    ds.SeriesNumber = instance
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = ds.ImagerPixelSpacing = [f"{case.pixel_spacing_mm:.6f}"] * 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = f"{(peak + 1) / 2:g}"
    ds.WindowWidth = f"{peak + 1:g}"
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2" if bits > 8 else np.uint8).tobytes()
    ds.save_as(Path(path), enforce_file_format=True)
