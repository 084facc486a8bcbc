"""Read any supported radiograph (PNG, JPEG, TIFF, DICOM) into one float image plus metadata.

Every reader ends in the same shape: ``float32`` ``H x W`` in ``[0, 1]``, 0 = air (black), 1 = bone
(white). The format is told by the file's content (magic bytes), not its extension; the only use of
the name is to allow a DICOM without its 128-byte preamble when the name ends in ``.dcm``.
Reading never writes anything. Every failure is an :class:`ImageReadError` naming the file.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from core import settings

# Luma weights (ITU-R BT.601, the ones Pillow's convert("L") uses) for colour -> grayscale.
_LUMA = np.array([0.299, 0.587, 0.114])
# 72 and 96 dpi are software defaults, not a measured detector pitch.
_PLACEHOLDER_DPI = (72.0, 96.0)
# Plausible radiograph pixel pitch; outside it a resolution tag is a default or an error.
_SPACING_RANGE_MM = (0.01, 5.0)
_DETECTOR_BITS = (10, 12, 14, 16)
# Smallest side a radiograph may have: below it there is no spine to see (a 1 x 1 "image" is a mistake).
MIN_SIDE = 32
# Tags shown in the de-identified DICOM view. Nothing that names or dates the patient or study.
_DICOM_TAGS = {
    "modality": "Modality",
    "body_part_examined": "BodyPartExamined",
    "view_position": "ViewPosition",
    "image_laterality": "ImageLaterality",
    "patient_orientation": "PatientOrientation",
    "rows": "Rows",
    "columns": "Columns",
    "number_of_frames": "NumberOfFrames",
    "samples_per_pixel": "SamplesPerPixel",
    "photometric_interpretation": "PhotometricInterpretation",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "pixel_representation": "PixelRepresentation",
    "pixel_spacing": "PixelSpacing",
    "imager_pixel_spacing": "ImagerPixelSpacing",
    "rescale_slope": "RescaleSlope",
    "rescale_intercept": "RescaleIntercept",
    "window_center": "WindowCenter",
    "window_width": "WindowWidth",
    "voi_lut_function": "VOILUTFunction",
    "kvp": "KVP",
    "manufacturer": "Manufacturer",
    "manufacturer_model_name": "ManufacturerModelName",
}


class ImageReadError(ValueError):
    """A file that cannot be read as a radiograph; the message says which file and why."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # decoder messages span lines


@dataclass
class Radiograph:
    pixels: np.ndarray  # float32 H x W in [0, 1], bone bright
    source_bit_depth: int  # 8, 12, 16 ...
    pixel_spacing_mm: tuple[float, float] | None  # (row, col) when known
    photometric: str  # "MONOCHROME2" after reading; the original is in meta
    original_size: tuple[int, int]  # (width, height)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def read_image(
    source: str | Path | bytes | BinaryIO,
    name: str | None = None,
    max_pixels: int | None = None,
) -> Radiograph:
    """Read a PNG, JPEG, TIFF or DICOM radiograph from a path, bytes or a binary file object.

    ``name`` labels the data in messages (an upload's file name) and allows a preamble-less DICOM
    when it ends in ``.dcm``. Images over ``max_pixels`` (width x height; default
    ``settings.max_image_pixels()``) are refused from their header, before any decoding; files, and a DICOM's
    pixel data as declared or inflated, over ``settings.max_file_bytes()`` likewise.
    """
    max_pixels = settings.max_image_pixels() if max_pixels is None else int(max_pixels)
    data, label = _load_bytes(source, name)
    if not data:
        raise ImageReadError(f"{label}: the file is empty")
    kind = _sniff(data)
    if kind is None and label.lower().endswith(".dcm"):
        kind = "dicom"
    if kind is None:
        raise ImageReadError(
            f"{label}: not a supported image (PNG, JPEG, TIFF or DICOM); its content matches none of them"
        )
    if kind == "dicom":
        return _read_dicom(data, label, max_pixels, forced=data[128:132] != b"DICM")
    return _read_with_pillow(data, label, kind, max_pixels)


def require_usable(radiograph: Radiograph, label: str, min_side: int = MIN_SIDE) -> Radiograph:
    """The radiograph itself, or ImageReadError when it decodes but cannot be a lateral neck film:
    smaller than ``min_side`` pixels on a side, one value everywhere (blank), or a colour DICOM
    (radiographs are grayscale; a colour DICOM is a photo or a screen capture)."""
    width, height = radiograph.original_size
    if min(width, height) < min_side:
        raise ImageReadError(f"{label}: the image is only {width} x {height} pixels; "
                             f"a radiograph needs at least {min_side} x {min_side}")
    photometric = str(radiograph.meta.get("original_photometric", ""))
    if radiograph.meta.get("format") == "dicom" and not photometric.startswith("MONOCHROME"):
        raise ImageReadError(f"{label}: a colour DICOM ({photometric}), not a grayscale radiograph "
                             "(a photo or screen capture?)")
    if float(radiograph.pixels.max()) == float(radiograph.pixels.min()):
        raise ImageReadError(f"{label}: the image is blank (one value everywhere: {radiograph.source_bit_depth}-bit, "
                             f"{width} x {height})")
    return radiograph


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as 8-bit for display and thumbnails."""
    return np.round(np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_pil(radiograph: Radiograph) -> Image.Image:
    """An 8-bit grayscale Pillow image of the radiograph."""
    return Image.fromarray(to_uint8(radiograph.pixels), mode="L")


# --- input -------------------------------------------------------------------------------------


def _load_bytes(source: Any, name: str | None) -> tuple[bytes, str]:
    limit = settings.max_file_bytes()
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "the uploaded data"
        check_file_size(label, len(source), limit)
        return bytes(source), label
    if isinstance(source, (str, Path)):
        path = Path(source)
        label = name or str(path)
        try:
            if path.is_file():  # sized before reading: a 1 GB file is refused, not loaded
                check_file_size(label, path.stat().st_size, limit)
            return path.read_bytes(), label
        except FileNotFoundError:
            raise ImageReadError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageReadError(f"{label}: is a folder, not an image file") from None
        except OSError as exc:
            raise ImageReadError(f"{label}: cannot be opened ({exc.strerror or exc})") from None
    if hasattr(source, "read"):
        label = name or str(getattr(source, "name", "") or "the uploaded data")
        data = source.read(limit + 1)  # one byte over the budget is enough to refuse
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageReadError(f"{label}: was opened in text mode; open it in binary mode ('rb')")
        check_file_size(label, len(data), limit)
        return bytes(data), label
    raise ImageReadError(f"cannot read an image from a {type(source).__name__}; give a path, bytes or a binary file")


def check_file_size(label: str, size: int, limit: int | None = None) -> None:
    """ImageReadError when a file of ``size`` bytes is over the input budget (``settings.max_file_bytes()``)."""
    limit = settings.max_file_bytes() if limit is None else limit
    if size > limit:
        raise ImageReadError(f"{label}: the file is {_mib(size)}, over the {_mib(limit)} limit for one input "
                             "(CERVICURVE_MAX_FILE_MB); refused before reading")


def _mib(n: int) -> str:
    return f"{n / 1024**2:,.1f} MiB"


def _sniff(data: bytes) -> str | None:
    # DICM first: a DICOM preamble may itself hold a TIFF header (dual-personality files).
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


# --- PNG / JPEG / TIFF -------------------------------------------------------------------------

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_GRAY_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _read_with_pillow(data: bytes, label: str, kind: str, max_pixels: int) -> Radiograph:
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: our budget below decides, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[kind]])
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{label}: refused as a possible decompression bomb ({exc})") from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        if kind == "tiff":
            return _read_tiff_with_tifffile(data, label, max_pixels, pillow_error=exc)
        raise ImageReadError(f"{label}: the {kind.upper()} header is damaged or unreadable ({exc})") from None
    width, height = image.size
    _check_size(label, width, height, max_pixels)
    notes: list[str] = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"{'multi-page' if kind == 'tiff' else 'animated'} {kind.upper()} ({frames} frames): first frame used")
    try:
        image.load()
        pixels, bit_depth, photometric = _pillow_pixels(image, kind, data, notes)
    except ImageReadError:
        raise
    except Exception as exc:
        if kind == "tiff":
            return _read_tiff_with_tifffile(data, label, max_pixels, pillow_error=exc)
        raise ImageReadError(f"{label}: the {kind.upper()} data is truncated or corrupt ({exc})") from None
    spacing = _spacing_from_pillow(image, kind, notes)
    meta = {"format": kind, "original_photometric": photometric, "mode": image.mode, "frames": frames}
    return _finish(pixels, bit_depth, spacing, (width, height), notes, meta, label)


def _pillow_pixels(image: Image.Image, kind: str, data: bytes, notes: list[str]):
    """(pixels in [0, 1], source bit depth, original photometric) from a loaded Pillow image."""
    mode = image.mode
    if kind == "tiff":
        photometric = {0: "MONOCHROME1", 1: "MONOCHROME2", 2: "RGB", 3: "PALETTE COLOR", 5: "CMYK", 6: "YBR"}.get(
            image.tag_v2.get(262), "MONOCHROME2" if mode in _GRAY_MODES else mode
        )
    else:
        photometric = {"P": "PALETTE COLOR", "CMYK": "CMYK", "YCbCr": "YBR_FULL"}.get(
            mode, "MONOCHROME2" if mode in _GRAY_MODES or mode in ("LA", "La") else "RGB"
        )
    if mode in _GRAY_MODES:
        raw = np.asarray(image)
        bit_depth = {"1": 1, "L": 8, "I": 32, "F": 32}.get(mode, 16)
        if kind == "tiff":
            bit_depth = int(_first(image.tag_v2.get(258), bit_depth))
        pixels = _scale_gray(raw, bit_depth, notes)
        # Pillow already inverts 1- and 8-bit WhiteIsZero TIFFs; wider ones it leaves as stored.
        if photometric == "MONOCHROME1" and mode not in ("1", "L"):
            pixels = 1.0 - pixels
        if photometric == "MONOCHROME1":
            notes.append("MONOCHROME1 (white is zero) inverted so bone is bright")
        return pixels, bit_depth, photometric
    if mode in ("LA", "La"):
        _note_alpha(np.asarray(image.getchannel("A")), notes)
        return np.asarray(image.getchannel("L"), dtype=np.float32) / np.float32(255.0), 8, photometric
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        _note_alpha(np.asarray(rgba.getchannel("A")), notes)
    rgb = np.asarray(image.convert("RGB"))  # uint8: scaled once, in float32, by _rgb_to_gray
    bit_depth = 8
    if kind == "png" and len(data) > 25 and data[24] == 16:  # IHDR bit depth: Pillow keeps 8 of 16
        bit_depth = 16
    elif kind == "tiff":
        bit_depth = int(_first(image.tag_v2.get(258), 8))
    if bit_depth > 8:
        notes.append(f"{bit_depth}-bit colour {kind.upper()} read at 8 bits per channel")
    return _rgb_to_gray(rgb, notes, scale=255.0), bit_depth, photometric


def _read_tiff_with_tifffile(data: bytes, label: str, max_pixels: int, pillow_error: Exception) -> Radiograph:
    """TIFFs Pillow cannot decode (float16, 16-bit colour, odd layouts)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise ImageReadError(f"{label}: the TIFF is damaged: it holds no readable image")
            page = tif.pages[0]
            shape = page.shape
            samples = int(getattr(page, "samplesperpixel", 1) or 1)
            if len(shape) < 2 or (len(shape) > 2 and not (len(shape) == 3 and shape[-1] == samples)):
                raise ImageReadError(f"{label}: the TIFF's first page is not a 2-D image (shape {shape})")
            height, width = int(shape[0]), int(shape[1])
            _check_size(label, width, height, max_pixels)
            raw = page.asarray()
            photometric = {0: "MONOCHROME1", 1: "MONOCHROME2", 2: "RGB", 3: "PALETTE COLOR"}.get(
                int(page.photometric), str(page.photometric.name)
            )
            bit_depth = int(page.bitspersample)
            frames = len(tif.pages)
            resolution = _tifffile_resolution(page)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(
            f"{label}: the TIFF is truncated, corrupt or uses an encoding not supported here "
            f"(Pillow: {pillow_error}; tifffile: {exc})"
        ) from None
    notes: list[str] = []
    if frames > 1:
        notes.append(f"multi-page TIFF ({frames} pages): first page used")
    if raw.ndim == 3:
        pixels = _rgb_to_gray(_scale_gray(raw[..., :3], bit_depth, notes), notes)
    else:
        pixels = _scale_gray(raw, bit_depth, notes)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
        notes.append("MONOCHROME1 (white is zero) inverted so bone is bright")
    spacing = _spacing_from_dpi(resolution, notes) if resolution else None
    meta = {"format": "tiff", "original_photometric": photometric, "reader": "tifffile", "frames": frames}
    return _finish(pixels, bit_depth, spacing, (width, height), notes, meta, label)


def _tifffile_resolution(page) -> tuple[float, float] | None:
    """(x dpi, y dpi) when the TIFF states its resolution in a physical unit."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default: inch
    per_unit = {2: 1.0, 3: 2.54, 4: 25.4, 5: 25400.0}.get(unit)  # -> dots per inch
    if per_unit is None:
        return None
    x_num, x_den = tags["XResolution"].value
    y_num, y_den = tags["YResolution"].value
    if not x_den or not y_den:
        return None
    return (x_num / x_den * per_unit, y_num / y_den * per_unit)


def _spacing_from_pillow(image: Image.Image, kind: str, notes: list[str]) -> tuple[float, float] | None:
    if kind == "tiff":
        # Pillow reports a default 'dpi' when the tags are absent; trust only stated resolutions.
        tags = image.tag_v2
        if 282 not in tags or 283 not in tags or tags.get(296, 2) not in (2, 3):
            return None
    dpi = image.info.get("dpi")  # Pillow sets it only for a physical unit (inch, cm, metre)
    return _spacing_from_dpi(dpi, notes) if dpi else None


def _spacing_from_dpi(dpi, notes: list[str]) -> tuple[float, float] | None:
    try:
        x_dpi, y_dpi = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return None
    if any(abs(x_dpi - p) < 0.5 and abs(y_dpi - p) < 0.5 for p in _PLACEHOLDER_DPI):
        notes.append(f"resolution {x_dpi:.0f} dpi looks like a software default: pixel spacing left unknown")
        return None
    if x_dpi <= 0 or y_dpi <= 0:
        return None
    spacing = (25.4 / y_dpi, 25.4 / x_dpi)
    if not all(_SPACING_RANGE_MM[0] <= s <= _SPACING_RANGE_MM[1] for s in spacing):
        notes.append(f"stated resolution {x_dpi:g} x {y_dpi:g} dpi is implausible for a radiograph: ignored")
        return None
    return spacing


# --- DICOM -------------------------------------------------------------------------------------


def _read_dicom(data: bytes, label: str, max_pixels: int, forced: bool) -> Radiograph:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array

    try:
        ds = read_dicom_dataset(data, label, force=forced, max_pixels=max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom raises many types on malformed input
        what = "is not a readable DICOM file" if forced else "is a damaged or truncated DICOM file"
        raise ImageReadError(f"{label}: {what} ({exc})") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if forced:  # without the 'DICM' marker, garbage parses as "elements"; say what it is
            raise ImageReadError(f"{label}: is not a readable DICOM image (no 'DICM' marker and no pixel data)")
        kind = _dicom_kind(ds)
        raise ImageReadError(f"{label}: this DICOM{kind} holds no image (no pixel data)")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception:
        raise ImageReadError(f"{label}: this DICOM has pixel data but no valid Rows/Columns, so its size is unknown") from None
    _check_size(label, columns, rows, max_pixels)

    _ensure_transfer_syntax(ds)
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise ImageReadError(
            f"{label}: the pixel data uses '{tsyntax.name}' ({tsyntax}), which is not supported here"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ImageReadError(
            f"{label}: the pixel data is compressed with '{tsyntax.name}', which is not supported here "
            f"(decoding it needs: {needs})"
        )

    notes: list[str] = []
    frames = _nr_frames(ds)
    try:
        raw = pixel_array(ds, index=0 if frames > 1 else None)
    except Exception as exc:
        if "less than expected" in str(exc) or "truncat" in str(exc).lower():
            problem = "the pixel data is shorter than its header says (truncated file?)"
        else:
            problem = f"its '{tsyntax.name}' pixel data could not be decoded here"
        raise ImageReadError(f"{label}: {problem} ({exc})") from None
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): first frame used")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    meta: dict[str, Any] = {"format": "dicom", "original_photometric": photometric, "frames": frames,
                            "transfer_syntax": tsyntax.name, "dicom": dicom_summary(ds)}
    try:
        if photometric == "PALETTE COLOR":
            colour = apply_color_lut(raw, ds)
            depth = 16 if colour.dtype.itemsize > 1 else 8
            pixels = _rgb_to_gray(colour, notes, scale=2**depth - 1)
            meta["display"] = "palette"
        elif raw.ndim == 3:
            # pydicom returns YBR as RGB already; colour has no modality LUT or window.
            depth = int(ds.get("BitsStored", 8) or 8)
            pixels = _rgb_to_gray(raw, notes, scale=2**depth - 1)
            meta["display"] = "colour"
        else:
            values = apply_modality_lut(raw, ds)
            pixels, meta["display"] = _apply_voi(values, ds, notes)
            if photometric == "MONOCHROME1":
                pixels = 1.0 - pixels
                notes.append("MONOCHROME1 inverted so bone is bright")
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{label}: the DICOM's pixel description is inconsistent ({exc})") from None

    spacing = _dicom_spacing(ds, notes)
    bit_depth = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    return _finish(pixels, bit_depth, spacing, (columns, rows), notes, meta, label)


_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # FloatPixelData, DoubleFloatPixelData, PixelData
_HEADER_PEEK = 1 << 20  # inflated bytes parsed for Rows/Columns/frames before inflating the rest
_INFLATE_CHUNK = 1 << 20


def read_dicom_dataset(data: bytes, label: str, *, force: bool = False, max_pixels: int | None = None,
                       max_bytes: int | None = None):
    """A pydicom dataset from a DICOM file's bytes, with the input budgets applied before the pixel data is
    decoded: width x height over ``max_pixels`` (``settings.max_image_pixels()``) or pixel data over
    ``max_bytes`` (``settings.max_file_bytes()``: Rows x Columns x frames x samples x BitsAllocated as the header
    declares it, or as a deflated file inflates) is an ImageReadError. Other parse errors are pydicom's own.

    pydicom inflates a Deflated Explicit VR file whole in ``dcmread`` (1 MB can inflate to GBs), so such a file is
    inflated here instead: its header first, checked, then the rest in chunks up to the budget.
    """
    import pydicom

    max_pixels = settings.max_image_pixels() if max_pixels is None else max_pixels
    max_bytes = settings.max_file_bytes() if max_bytes is None else max_bytes
    check_file_size(label, len(data), max_bytes)
    if data[128:132] == b"DICM":
        from pydicom.filereader import _read_file_meta_info, read_preamble

        handle = io.BytesIO(data)
        try:
            preamble = read_preamble(handle, False)
            meta = _read_file_meta_info(handle)
        except Exception:
            meta = None  # dcmread below gives the error a person can read
        if meta is not None and meta.get("TransferSyntaxUID") == _DEFLATED:
            return _read_deflated(data, handle.tell(), preamble, meta, label, max_pixels, max_bytes)
    ds = pydicom.dcmread(io.BytesIO(data), force=force)
    check_dicom_budget(ds, label, max_pixels, max_bytes)
    return ds


def _read_deflated(data: bytes, start: int, preamble, meta, label: str, max_pixels: int, max_bytes: int):
    import zlib

    from pydicom.dataset import FileDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        chunks = [inflater.decompress(memoryview(data)[start:], _HEADER_PEEK)]
    except zlib.error as exc:
        raise ImageReadError(f"{label}: the deflated DICOM data is corrupt ({exc})") from None
    limit, why = max_bytes + _HEADER_PEEK, f"past {_mib(max_bytes)} (CERVICURVE_MAX_FILE_MB)"
    head = DicomBytesIO(chunks[0])
    try:  # the header comes before the pixel data: refuse what it declares before inflating the rest
        header = read_dataset(head, False, True, stop_when=lambda tag, vr, length: tag in _PIXEL_TAGS)
    except Exception:
        header = None  # cut mid-element, or damaged: the byte cap above still holds
    if header is not None:
        declared = check_dicom_budget(header, label, max_pixels, max_bytes)
        if declared is not None and head.tell() < len(chunks[0]):  # stopped at the pixel data: its offset is known
            # Deflated pixel data is native, so it is exactly what the header says; a little room for trailing
            # elements (padding, signatures). A file that lies about its size stops here, not at the budget.
            limit = min(limit, head.tell() + declared + _HEADER_PEEK)
            why = f"to more than its header declares ({_mib(declared)} of pixel data)"
    inflated = len(chunks[0])
    while not inflater.eof:
        try:
            chunk = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
        except zlib.error as exc:
            raise ImageReadError(f"{label}: the deflated DICOM data is corrupt ({exc})") from None
        if not chunk and not inflater.unconsumed_tail:
            break  # truncated: pydicom reports what is missing
        inflated += len(chunk)
        if inflated > limit:
            raise ImageReadError(f"{label}: the deflated DICOM inflates {why}; refused (possible decompression bomb)")
        chunks.append(chunk)
    body = b"".join(chunks)
    del chunks
    dataset = read_dataset(DicomBytesIO(body), False, True)
    del body
    ds = FileDataset(label, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    check_dicom_budget(ds, label, max_pixels, max_bytes)
    return ds


def check_dicom_budget(ds, label: str, max_pixels: int | None = None, max_bytes: int | None = None) -> int | None:
    """ImageReadError when the header's Rows x Columns is over ``max_pixels`` or the pixel data it declares
    (x frames x samples x BitsAllocated) over ``max_bytes``; read from the header only, nothing decoded. Returns
    the declared pixel bytes; None for a header too broken to compute (left to the reader's own checks)."""
    max_pixels = settings.max_image_pixels() if max_pixels is None else max_pixels
    max_bytes = settings.max_file_bytes() if max_bytes is None else max_bytes
    try:
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        samples = max(1, int(ds.get("SamplesPerPixel") or 1))
        bits = max(1, int(ds.get("BitsAllocated") or 8))
    except (TypeError, ValueError):
        return None
    if rows <= 0 or columns <= 0:
        return None
    _check_size(label, columns, rows, max_pixels)
    declared = rows * columns * _nr_frames(ds) * samples * bits // 8
    if declared > max_bytes:
        raise ImageReadError(f"{label}: the DICOM declares {_mib(declared)} of pixel data ({columns} x {rows}, "
                             f"{_nr_frames(ds)} frames, {bits} bits), over the {_mib(max_bytes)} limit "
                             "(CERVICURVE_MAX_FILE_MB); refused before decoding")
    return declared


def dicom_summary(dataset) -> dict:
    """Tags of interest for display, JSON-safe, with nothing that identifies the patient or study.

    Names, IDs, dates, times, institutions, operators and instance UIDs are left out by construction:
    only the tags listed in ``_DICOM_TAGS`` are read.
    """
    summary: dict[str, Any] = {}
    for key, keyword in _DICOM_TAGS.items():
        value = dataset.get(keyword)
        if value is None or value == "":
            continue
        summary[key] = _json_value(value)
    sop_class = dataset.get("SOPClassUID")
    if sop_class:
        summary["sop_class"] = getattr(sop_class, "name", str(sop_class))
    file_meta = getattr(dataset, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        summary["transfer_syntax"] = getattr(tsyntax, "name", str(tsyntax))
    return summary


def _json_value(value):
    from pydicom.multival import MultiValue
    from pydicom.valuerep import DSfloat, IS

    if isinstance(value, (MultiValue, list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, (DSfloat, float)):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def _dicom_kind(ds) -> str:
    file_meta = getattr(ds, "file_meta", None) or {}
    sop = ds.get("SOPClassUID") or file_meta.get("MediaStorageSOPClassUID")
    name = getattr(sop, "name", "") if sop else ""
    if name and name != str(sop):
        return f" ({name})"
    modality = ds.get("Modality")
    return f" (modality {modality})" if modality else ""


def _ensure_transfer_syntax(ds) -> None:
    """Files without file meta (no preamble) still say how they were encoded; tell the decoder."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _nr_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _apply_voi(values: np.ndarray, ds, notes: list[str]) -> tuple[np.ndarray, str]:
    """The file's VOI LUT or window, mapped to [0, 1]; min-max when it has none or a broken one."""
    from pydicom.pixels import apply_voi_lut

    has_lut = bool(ds.get("VOILUTSequence"))
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut or has_window:
        if np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)):
            values = values.astype(np.int64)  # a VOI LUT indexes by stored integer values
        try:
            out = apply_voi_lut(values, ds).astype(np.float32, copy=False)
            if has_lut:
                lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
                low, high = float(lut.min()), float(lut.max())
                how = "VOI LUT"
            else:
                # The window's output range (pydicom's y_min/y_max) is what far-out inputs map to.
                with np.errstate(over="ignore"):
                    low, high = apply_voi_lut(np.array([-1e15, 1e15]), ds).astype(np.float64)
                how = f"window C={_json_value(ds.WindowCenter)} W={_json_value(ds.WindowWidth)}"
            if high != low and np.isfinite(low) and np.isfinite(high):
                out -= np.float32(low)
                out /= np.float32(high - low)
                return out, how
        except Exception as exc:
            notes.append(f"the file's VOI window/LUT is invalid ({exc}): min-max scaling used")
            return _min_max(values, notes), "min-max"
    else:
        notes.append("no VOI window in the file: min-max scaling used")
    return _min_max(values, notes), "min-max"


def _dicom_spacing(ds, notes: list[str]) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            spacing = (float(value[0]), float(value[1]))
        except (TypeError, ValueError, IndexError):
            continue
        if all(s > 0 and math.isfinite(s) for s in spacing):
            if keyword == "ImagerPixelSpacing":
                notes.append("pixel spacing from ImagerPixelSpacing (at the detector, not corrected for magnification)")
            return spacing
    return None


# --- shared ------------------------------------------------------------------------------------


def _check_size(label: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(f"{label}: the header gives an empty image size ({width} x {height})")
    if width * height > max_pixels:
        raise ImageReadError(
            f"{label}: image is {width} x {height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; refused before decoding (possible decompression bomb)"
        )


def _first(value, default):
    if isinstance(value, (tuple, list)):
        return value[0] if value else default
    return default if value is None else value


def _scale_gray(raw: np.ndarray, bit_depth: int, notes: list[str]) -> np.ndarray:
    """Stored values to [0, 1]: by the integer range in use, min-max for signed or float data."""
    if raw.dtype == bool:
        return raw.astype(np.float32)
    if np.issubdtype(raw.dtype, np.floating):
        values = raw.astype(np.float32)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=0.0)
        return _min_max(values, notes)
    if raw.dtype.itemsize == 1 and not np.issubdtype(raw.dtype, np.signedinteger):
        return raw.astype(np.float32) / 255.0  # the common 8-bit film: float32 at once (a 2048 px film is 4 M pixels)
    if int(raw.min()) < 0:
        return _min_max(raw, notes)
    # 16-bit containers often hold 10-14 bit detector data; scale by the smallest detector range
    # that holds the maximum, so a 12-bit film in a 16-bit PNG is not nearly black.
    stated = bit_depth if bit_depth in _DETECTOR_BITS else 16
    peak = int(raw.max())
    used = next((b for b in _DETECTOR_BITS if b <= stated and peak <= 2**b - 1), None)
    if used is None:
        return _min_max(raw, notes)
    if used < stated:
        notes.append(f"{stated}-bit image uses {used} bits (max {peak}): scaled by {2**used - 1}")
    return raw.astype(np.float32) / float(2**used - 1)


def _rgb_to_gray(rgb: np.ndarray, notes: list[str], scale: float = 1.0) -> np.ndarray:
    """Luma of an RGB array divided by ``scale``, in float32 one channel at a time: a float64 H x W x 3 copy of a
    50 Mpx film would be 1.2 GB."""
    rgb = rgb[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return rgb[..., 0].astype(np.float32) / np.float32(scale)
    notes.append("colour image converted to grayscale")
    gray = np.zeros(rgb.shape[:-1], dtype=np.float32)
    for channel, weight in enumerate(_LUMA):
        gray += rgb[..., channel].astype(np.float32) * np.float32(weight / scale)
    return gray


def _note_alpha(alpha: np.ndarray, notes: list[str]) -> None:
    if alpha.size and alpha.min() < 255:
        notes.append("transparency (alpha channel) ignored")


def _min_max(values: np.ndarray, notes: list[str]) -> np.ndarray:
    values = np.asarray(values)
    finite = np.isfinite(values)
    if not finite.any():
        notes.append("image holds no finite values: shown black")
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    if high == low:
        notes.append("image has a single value everywhere")
        return np.zeros(values.shape, dtype=np.float32)
    # One float32 copy, scaled in place (never float64): the 0..1 image is what is kept.
    out = values.astype(np.float32)
    out -= np.float32(low)
    out /= np.float32(high - low)
    out[~finite] = 0.0
    return out


def _finish(pixels, bit_depth, spacing, size, notes, meta, label) -> Radiograph:
    pixels = np.array(pixels, dtype=np.float32)  # a copy of our own: cleaned in place below
    if pixels.ndim != 2:
        raise ImageReadError(f"{label}: decoded to a {pixels.ndim}-D array, not a 2-D image")
    np.nan_to_num(pixels, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    if pixels.shape != (size[1], size[0]):
        raise ImageReadError(f"{label}: decoded size {pixels.shape[1]} x {pixels.shape[0]} differs from its header")
    if spacing is not None:
        spacing = (float(spacing[0]), float(spacing[1]))
    return Radiograph(
        pixels=pixels,
        source_bit_depth=int(bit_depth),
        pixel_spacing_mm=spacing,
        photometric="MONOCHROME2",
        original_size=(int(size[0]), int(size[1])),
        notes=notes,
        meta=meta,
    )
