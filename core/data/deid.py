"""DICOM de-identification: the PS3.15 Basic Application Level Confidentiality Profile and salted patient pseudonyms.

Pure functions on pydicom datasets (no store access); ``core.data.importers`` applies them to every DICOM it imports.
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Any

from core import settings

# DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile (the identifying attributes of
# Table E.1-1 a cervical radiograph carries). Person names (VR PN) and all dates and times are blanked
# wherever they occur; these are removed; instance UIDs are replaced.
_REMOVE_KEYWORDS = frozenset("""
    OtherPatientIDs OtherPatientIDsSequence OtherPatientNames PatientAddress PatientTelephoneNumbers
    PatientAge PatientSize PatientWeight PatientBirthName PatientMotherBirthName PatientBirthTime
    EthnicGroup Occupation MilitaryRank BranchOfService MedicalRecordLocator PatientReligiousPreference
    AdditionalPatientHistory PatientComments CountryOfResidence RegionOfResidence IssuerOfPatientID
    PatientInsurancePlanCodeSequence MedicalAlerts Allergies SmokingStatus PregnancyStatus LastMenstrualDate
    PatientState ResponsibleOrganization InstitutionName InstitutionAddress InstitutionalDepartmentName
    InstitutionCodeSequence StationName DeviceSerialNumber ReferringPhysicianAddress
    ReferringPhysicianTelephoneNumbers RequestingService RequestAttributesSequence ReferencedPatientSequence
    ReferencedStudySequence ReferencedPerformedProcedureStepSequence PerformedProcedureStepID
    PerformedProcedureStepDescription ScheduledProcedureStepID RequestedProcedureID RequestedProcedureDescription
    AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence StudyDescription SeriesDescription ImageComments
    ProtocolName DerivationDescription AcquisitionComments FrameComments ReasonForStudy
    ReasonForTheRequestedProcedure ContentCreatorName PersonIdentificationCodeSequence
    OperatorIdentificationSequence PerformingPhysicianIdentificationSequence
    PhysiciansOfRecordIdentificationSequence PhysiciansReadingStudyIdentificationSequence
    ReferringPhysicianIdentificationSequence
""".split())
_BLANK_KEYWORDS = frozenset("PatientName PatientBirthDate PatientSex AccessionNumber StudyID".split())
_REPLACE_UID_KEYWORDS = frozenset("""
    StudyInstanceUID SeriesInstanceUID SOPInstanceUID ReferencedSOPInstanceUID FrameOfReferenceUID
    SynchronizationFrameOfReferenceUID IrradiationEventUID DeviceUID ConcatenationUID DimensionOrganizationUID
    StorageMediaFileSetUID MediaStorageSOPInstanceUID
""".split())
# LO allows 64 characters; the code sequence names the profile in full (DCM 113100).
DEIDENTIFICATION_METHOD = "CerviCurve PS3.15 Basic Profile; salted pseudonym PatientID"


def patient_pseudonym(patient_id: str, salt: bytes | None = None) -> str:
    """A stable, salted stand-in for a DICOM PatientID: same patient -> same pseudonym in this workspace."""
    salt = settings.pseudonym_salt() if salt is None else salt
    return "anon-" + hmac.new(salt, str(patient_id).strip().encode(), hashlib.sha256).hexdigest()[:16]


def deidentify(ds, salt: bytes | None = None) -> str:
    """De-identify a pydicom Dataset in place; returns the patient pseudonym it now carries."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    salt = settings.pseudonym_salt() if salt is None else salt
    original_id = str(ds.get("PatientID", "") or "").strip()
    key = original_id or str(ds.get("StudyInstanceUID", "") or "") or str(ds.get("SOPInstanceUID", ""))
    pseudonym = patient_pseudonym(key, salt)

    def new_uid(value: Any) -> Any:
        # Deterministic, so re-importing a file yields the same de-identified bytes (and one stored image).
        if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str):
            return [generate_uid(entropy_srcs=[salt.decode(), str(v)]) for v in value]
        return generate_uid(entropy_srcs=[salt.decode(), str(value)]) if value else value

    def scrub(dataset, element) -> None:
        keyword = element.keyword
        if keyword in _REMOVE_KEYWORDS or (element.tag.group & 0xFF00) in (0x5000, 0x6000):  # curves, overlays
            del dataset[element.tag]
        elif keyword in _REPLACE_UID_KEYWORDS:
            element.value = new_uid(element.value)
        elif keyword in _BLANK_KEYWORDS or element.VR in ("PN", "DA", "DT", "TM"):
            element.value = [] if element.VR == "SQ" else ""

    ds.remove_private_tags()
    ds.walk(scrub)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    return pseudonym
