"""De-identification on a real DICOM file full of identifying text: nothing of it survives, the image does."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from core.data import deid, importers
from core.data.store import AnnotationStore

SALT = b"test-salt"
# Each planted string is unique, so a hit names the place it came from.
SECRETS = {
    "PatientName": "DOE^JANE^MARIE",
    "PatientID": "MRN-0001-SECRET",
    "PatientBirthDate": "19610412",
    "PatientAddress": "12 ELM STREET SPRINGFIELD",
    "PatientTelephoneNumbers": "555-0199-PHONE",
    "OtherPatientIDs": "OTHERID-4242",
    "InstitutionName": "ST ELSEWHERE HOSPITAL",
    "InstitutionAddress": "1 HOSPITAL ROAD GOTHAM",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "CUDDY^LISA",
    "OperatorsName": "TECH^TERRY",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-DEVICE-778899",
    "PlateID": "PLATE-55501",
    "CassetteID": "CASSETTE-66602",
    "DetectorID": "DETECTOR-77703",
    "AccessionNumber": "ACC998877",
    "StudyID": "STUDY-ID-31337",
    "StudyDate": "20240102",
    "StudyDescription": "NECK LAT FOR SMITHERS WAYLON",
    "SeriesDescription": "C-SPINE OF BURNS MONTGOMERY",
    "ImageComments": "Patient Ned Flanders called back",
    "RequestingPhysician": "HIBBERT^JULIUS",
    "AdditionalPatientHistory": "fell at 742 EVERGREEN TERRACE",
}
NESTED = {
    # OriginalAttributesSequence > ModifiedAttributesSequence > PatientID (the case)
    "nested_patient_id": "NESTED-MRN-9999",
    "nested_patient_name": "NESTED^NAME^ZED",
    "request_physician": "REQUEST^NICK^RIVIERA",
    "referenced_uid": "1.2.826.0.1.3680043.2.1125.555",
    "private": "PRIVATE VENDOR NOTE KRUSTY",
    "private_in_sequence": "PRIVATE NESTED NOTE SIDESHOW",
    "voi_explanation": "WINDOW SET BY DR NICK",
    "source_ae": "SENDER-AE-TITLE",
}
ORIGINAL_UIDS = {"StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.111",
                 "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.222",
                 "SOPInstanceUID": "1.2.826.0.1.3680043.2.1125.333"}


def identifying_dicom(path: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR
    meta.MediaStorageSOPInstanceUID = ORIGINAL_UIDS["SOPInstanceUID"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.SourceApplicationEntityTitle = NESTED["source_ae"]
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    for keyword, uid in ORIGINAL_UIDS.items():
        setattr(ds, keyword, uid)
    for keyword, value in SECRETS.items():
        setattr(ds, keyword, value)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CSPINE", "LL"

    modified = Dataset()
    modified.PatientID = NESTED["nested_patient_id"]
    modified.PatientName = NESTED["nested_patient_name"]
    original = Dataset()
    original.ModifiedAttributesSequence = Sequence([modified])
    original.SourceOfPreviousValues = "OLD PACS"
    original.ModifyingSystem = "PACS"
    original.ReasonForTheAttributeModification = "COERCE"
    ds.OriginalAttributesSequence = Sequence([original])
    request = Dataset()
    request.RequestingPhysician = NESTED["request_physician"]
    request.add_new(0x00191010, "LO", NESTED["private_in_sequence"])
    ds.RequestAttributesSequence = Sequence([request])
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    reference.ReferencedSOPInstanceUID = NESTED["referenced_uid"]
    ds.ReferencedImageSequence = Sequence([reference])
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", NESTED["private"])
    voi = Dataset()
    voi.LUTDescriptor = [256, 0, 8]
    voi.LUTExplanation = NESTED["voi_explanation"]
    voi.add_new(0x00283006, "US", list(range(256)))  # LUTData
    ds.VOILUTSequence = Sequence([voi])

    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelData = np.random.default_rng(0).integers(0, 4096, (64, 48), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def all_values(dataset) -> list[str]:
    """Every element's value as text, recursively through every sequence (file meta included)."""
    out = []

    def collect(ds):
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    collect(item)
            elif element.tag != 0x7FE00010:
                out.append(str(element.value))

    collect(dataset)
    if getattr(dataset, "file_meta", None) is not None:
        collect(dataset.file_meta)
    return out


PLANTED = [*SECRETS.values(), *NESTED.values(), *ORIGINAL_UIDS.values()]


def test_the_planted_file_really_carries_every_secret(tmp_path):
    import pydicom

    path = identifying_dicom(tmp_path / "film.dcm")
    raw, text = path.read_bytes(), " ".join(all_values(pydicom.dcmread(path)))
    assert len(PLANTED) >= 30
    assert all(secret.encode() in raw and secret in text for secret in PLANTED)


def test_no_planted_string_survives_in_any_element_or_byte(tmp_path):
    import pydicom

    source = identifying_dicom(tmp_path / "film.dcm")
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()

    done = deid.deidentify(ds, SALT)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    written = buffer.getvalue()
    back = pydicom.dcmread(io.BytesIO(written))

    values = " ".join(all_values(back)).upper()
    survivors = [s for s in PLANTED if s.upper() in values or s.encode() in written]
    assert survivors == []
    # Fragments too (surnames in free text, the id's digits).
    for fragment in ("DOE", "SMITHERS", "FLANDERS", "EVERGREEN", "KRUSTY", "RIVIERA", "0001-SECRET", "19610412"):
        assert fragment.encode() not in written, fragment
    assert not any(element.tag.is_private for element in back.iterall())
    assert "OriginalAttributesSequence" not in back and "RequestAttributesSequence" not in back
    # What makes the file usable stays: pixels, spacing, the display LUT (without its free text).
    np.testing.assert_array_equal(back.pixel_array, pixels)
    assert back.ImagerPixelSpacing == [0.15, 0.15] and back.Modality == "CR"
    assert "LUTExplanation" not in back.VOILUTSequence[0] and len(back.VOILUTSequence[0].LUTData) == 256
    # What was done is said in the file.
    assert back.PatientIdentityRemoved == "YES" and "Basic Profile" in back.DeidentificationMethod
    assert back.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert back.LongitudinalTemporalInformationModified == "REMOVED"
    assert back.PatientID == done.pseudonym == deid.patient_pseudonym(SECRETS["PatientID"], SALT)
    assert str(back.PatientName) == "" and back.StudyDate == "" and back.AccessionNumber == ""
    assert done.burned_in_annotation == "not stated" and done.removed >= 30


def test_uids_are_replaced_consistently_and_dates_removed(tmp_path):
    import pydicom

    first = pydicom.dcmread(identifying_dicom(tmp_path / "a.dcm"))
    second = pydicom.dcmread(identifying_dicom(tmp_path / "b.dcm"))
    deid.deidentify(first, SALT)
    deid.deidentify(second, SALT)
    for keyword in ORIGINAL_UIDS:
        assert first.get(keyword) == second.get(keyword) != ORIGINAL_UIDS[keyword]
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert not [e for e in first.iterall() if e.VR in ("DA", "DT", "TM") and e.value]
    other = pydicom.dcmread(identifying_dicom(tmp_path / "c.dcm"))
    deid.deidentify(other, b"another workspace")
    assert other.StudyInstanceUID != first.StudyInstanceUID and other.PatientID != first.PatientID


def test_import_stores_only_the_clean_copy_and_flags_burned_in_text(workspace, tmp_path):
    import pydicom

    src = tmp_path / "films"
    identifying_dicom(src / "film.dcm")
    stated = pydicom.dcmread(identifying_dicom(src / "marked.dcm"))
    stated.BurnedInAnnotation = "YES"
    stated.SOPInstanceUID = stated.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.444"
    stated.save_as(src / "marked.dcm", enforce_file_format=True)

    with AnnotationStore() as store:
        report = importers.import_dicom(src, dataset="films", store=store)
        (item,) = store.current_labels("films")
    assert report.imported == 1
    assert "BurnedInAnnotation is YES" in dict(report.skipped)["marked.dcm"]
    assert any("BurnedInAnnotation" in note for note in report.notes)
    assert item.meta["burned_in_annotation"] == "not stated"
    stored = (workspace / item.path).read_bytes()
    assert [s for s in PLANTED if s.encode() in stored] == []
    everything = b"".join(p.read_bytes() for p in workspace.rglob("*") if p.is_file())
    assert [s for s in PLANTED if s.encode() in everything] == []


@pytest.fixture(scope="module")
def pydicom_test_files() -> list[Path]:
    import pydicom.data

    # The files shipped inside the package (get_testdata_files would try to download the rest).
    folder = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".json", ".txt"))


def test_every_pydicom_test_file_imports_or_is_refused_without_a_crash(workspace, tmp_path, pydicom_test_files):
    src = tmp_path / "pydicom"
    src.mkdir()
    for n, path in enumerate(pydicom_test_files):
        (src / f"{n:03d}_{path.name}").write_bytes(path.read_bytes())

    with AnnotationStore() as store:
        report = importers.import_dicom(src, dataset="pydicom", store=store)
        items = store.current_labels("pydicom")

    assert report.imported + len(report.skipped) == len(pydicom_test_files) > 50
    assert report.imported >= 10, report.format()
    assert all(reason and "Traceback" not in reason for _, reason in report.skipped)
    import pydicom

    for item in items:
        stored = pydicom.dcmread(workspace / item.path)
        assert stored.PatientIdentityRemoved == "YES" and not any(e.tag.is_private for e in stored.iterall())
        assert all(e.keyword in deid.KEEP or e.keyword in (*deid.EMPTIED, "PatientID", "PatientIdentityRemoved",
                   "DeidentificationMethod", "DeidentificationMethodCodeSequence", "CodeValue",
                   "CodingSchemeDesignator", "CodeMeaning", "LongitudinalTemporalInformationModified")
                   for e in stored.iterall())
    print(f"pydicom test files: {len(pydicom_test_files)}, imported {report.imported}, refused {len(report.skipped)}")
