"""DICOM de-identification: the PS3.15 Basic Application Level Confidentiality Profile as a strict keep-list,
and salted patient pseudonyms.

A keep-list, not a remove-list: every attribute not named in ``KEEP`` goes, at every depth of every sequence,
private tags and unknown tags included. So an identifier the code never heard of (PlateID, CassetteID,
DetectorID, a PatientID nested in OriginalAttributesSequence > ModifiedAttributesSequence, a vendor's private
block, a name typed into StudyDescription) cannot survive. What is kept describes the pixels and the
acquisition geometry only (Table E.1-1 lists none of it). Of Table E.1-1:

- "Z" (zero-length) for the Type 2 attributes a valid file needs: ``EMPTIED``;
- "U" (replace UID, consistently): ``REPLACED_UIDS`` map through the workspace salt, so the same original
  UID always gives the same new one and films of one study stay one study;
- "X"/"D" for everything else: removed, dates and times included (no date shifting: nothing dated is kept;
  ``LongitudinalTemporalInformationModified`` says ``REMOVED``);
- PatientID becomes the salted pseudonym (``patient_pseudonym``), so a patient's films stay grouped.
- the 128-byte preamble (free for any use, so it may hold anything) is zeroed.

Burned-in annotation is not a tag problem: ``deidentify`` reports what the file states in
``Deidentified.burned_in_annotation`` and the importer refuses ``YES`` and flags an unstated value.
Pure functions on pydicom datasets (no store access); ``core.data.importers`` applies them to every DICOM it imports.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from core import settings

# Attributes that survive, at any depth (a sequence survives only when named here, and its items are
# filtered by the same list). Pixel description, display transforms, acquisition geometry, device make.
KEEP = frozenset("""
    SpecificCharacterSet ImageType SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID
    FrameOfReferenceUID Modality ConversionType PresentationIntentType BodyPartExamined ViewPosition
    ImageLaterality Laterality PatientOrientation PatientPosition SeriesNumber InstanceNumber AcquisitionNumber
    Manufacturer ManufacturerModelName KVP ExposureTime XRayTubeCurrent Exposure ExposureInuAs
    DistanceSourceToDetector DistanceSourceToPatient EstimatedRadiographicMagnificationFactor
    SamplesPerPixel PhotometricInterpretation PlanarConfiguration NumberOfFrames FrameIncrementPointer
    Rows Columns PixelSpacing ImagerPixelSpacing PixelSpacingCalibrationType PixelAspectRatio
    BitsAllocated BitsStored HighBit PixelRepresentation SmallestImagePixelValue LargestImagePixelValue
    PixelPaddingValue PixelPaddingRangeLimit PixelIntensityRelationship PixelIntensityRelationshipSign
    WindowCenter WindowWidth VOILUTFunction RescaleIntercept RescaleSlope RescaleType
    ModalityLUTSequence VOILUTSequence LUTDescriptor LUTData ModalityLUTType PresentationLUTShape
    RedPaletteColorLookupTableDescriptor GreenPaletteColorLookupTableDescriptor
    BluePaletteColorLookupTableDescriptor RedPaletteColorLookupTableData GreenPaletteColorLookupTableData
    BluePaletteColorLookupTableData LossyImageCompression LossyImageCompressionRatio LossyImageCompressionMethod
    BurnedInAnnotation RecognizableVisualFeatures
    PixelData FloatPixelData DoubleFloatPixelData ExtendedOffsetTable ExtendedOffsetTableLengths
""".split())
# Type 2 attributes of the Patient and Study modules: present, empty (PS3.15 action Z).
EMPTIED = ("PatientName", "PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber",
           "StudyID", "StudyDate", "StudyTime")
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
# LO allows 64 characters; the code sequence names the profile in full (DCM 113100).
DEIDENTIFICATION_METHOD = "PS3.15 Basic Profile keep-list; UIDs replaced; dates removed"
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Deidentified:
    pseudonym: str  # the PatientID the dataset now carries
    removed: int  # attributes removed, nested ones included
    burned_in_annotation: str  # "YES", "NO" or "not stated": what the file says about text in its pixels


def patient_pseudonym(patient_id: str, salt: bytes | None = None) -> str:
    """A stable, salted stand-in for a DICOM PatientID: same patient -> same pseudonym in this workspace."""
    salt = settings.pseudonym_salt() if salt is None else salt
    return "anon-" + hmac.new(salt, str(patient_id).strip().encode(), hashlib.sha256).hexdigest()[:16]


def replacement_uid(uid: str, salt: bytes) -> str:
    """Deterministic, so re-importing a file yields the same de-identified bytes (and one stored image)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[salt.decode(errors="replace"), str(uid)])


def deidentify(ds, salt: bytes | None = None) -> Deidentified:
    """De-identify a pydicom Dataset in place (file meta rebuilt); returns what was done."""
    from pydicom.dataset import Dataset, FileMetaDataset

    salt = settings.pseudonym_salt() if salt is None else salt
    original_id = str(ds.get("PatientID", "") or "").strip()
    key = original_id or str(ds.get("StudyInstanceUID", "") or "") or str(ds.get("SOPInstanceUID", ""))
    pseudonym = patient_pseudonym(key, salt)
    uids = {keyword: replacement_uid(ds.get(keyword), salt) for keyword in REPLACED_UIDS if ds.get(keyword)}
    if "SOPInstanceUID" not in uids:  # a file needs one; derive it from the pixels, not from anything identifying
        pixels = ds.get("PixelData") or b""
        uids["SOPInstanceUID"] = replacement_uid(hashlib.sha256(bytes(pixels)).hexdigest(), salt)
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() or "not stated"
    old_meta = getattr(ds, "file_meta", None)
    transfer_syntax = old_meta.get("TransferSyntaxUID") if old_meta is not None else None
    if not transfer_syntax:
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        transfer_syntax = ImplicitVRLittleEndian if implicit else (
            ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)

    removed = _keep_only(ds)
    for keyword, uid in uids.items():
        setattr(ds, keyword, uid)
    for keyword in EMPTIED:
        setattr(ds, keyword, "")
    ds.PatientID = pseudonym
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]

    # The 128-byte preamble is free for any use (a TIFF header, a name, malware): written out as zeros.
    ds.preamble = b"\0" * 128
    meta = FileMetaDataset()  # rebuilt: the old one may name the sending station (SourceApplicationEntityTitle)
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID") or _SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return Deidentified(pseudonym=pseudonym, removed=removed, burned_in_annotation=burned)


def _keep_only(dataset) -> int:
    """Remove every element not on the keep-list, recursing into the kept sequences; returns how many went."""
    removed = 0
    for tag in list(dataset.keys()):
        element = dataset[tag]
        if tag.is_private or element.keyword not in KEEP:
            del dataset[tag]
            removed += 1
        elif element.VR == "SQ":
            for item in element.value:
                removed += _keep_only(item)
    return removed
