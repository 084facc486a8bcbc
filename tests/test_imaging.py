"""core.data.imaging: real files written with Pillow, tifffile and pydicom, plus pydicom's own test files."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from core.data.imaging import ImageReadError, Radiograph, dicom_summary, read_image, to_pil, to_uint8

ROOT = Path(__file__).resolve().parents[1]


def gradient(height=32, width=48, top=255, dtype=np.uint8) -> np.ndarray:
    """Non-square on purpose, so (w, h) and (row, col) mix-ups show."""
    return np.tile(np.linspace(0, top, width), (height, 1)).round().astype(dtype)


def check_radiograph(r: Radiograph, width: int, height: int) -> None:
    assert isinstance(r, Radiograph)
    assert r.pixels.dtype == np.float32 and r.pixels.shape == (height, width)
    assert 0.0 <= r.pixels.min() and r.pixels.max() <= 1.0
    assert r.original_size == (width, height)
    assert r.photometric == "MONOCHROME2"
    json.dumps(r.meta)  # the store saves meta as JSON


def write_dicom(path: Path, pixels: np.ndarray, photometric="MONOCHROME2", preamble=True, **tags) -> Path:
    """A DX radiograph with fake patient data; extra keyword arguments become DICOM tags."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-4711"
    ds.PatientBirthDate = "19610203"
    ds.StudyDate = "20240517"
    ds.InstitutionName = "Saint Nowhere Hospital"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CSPINE"
    ds.ViewPosition = "LL"
    frames = pixels if pixels.ndim == 3 else pixels[None]
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = frames.astype("<u2").tobytes()
    if not preamble:
        ds.preamble = None
    ds.save_as(path, enforce_file_format=preamble)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header but holds no pixels: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# --- PNG / JPEG / TIFF ---------------------------------------------------------------------------


def test_8bit_png_keeps_values_and_size(tmp_path):
    raw = gradient()
    Image.fromarray(raw).save(tmp_path / "a.png")
    r = read_image(tmp_path / "a.png")
    check_radiograph(r, 48, 32)
    np.testing.assert_allclose(r.pixels, raw / 255.0, atol=1e-6)
    assert r.source_bit_depth == 8 and r.pixel_spacing_mm is None
    assert r.meta["format"] == "png" and r.meta["original_photometric"] == "MONOCHROME2"
    assert r.notes == []


def test_16bit_png_full_range_and_12_bits_in_16(tmp_path):
    full = gradient(top=65535, dtype=np.uint16)
    Image.fromarray(full).save(tmp_path / "full.png")
    r = read_image(tmp_path / "full.png")
    check_radiograph(r, 48, 32)
    assert r.source_bit_depth == 16
    np.testing.assert_allclose(r.pixels, full / 65535.0, atol=1e-6)

    twelve = gradient(top=4000, dtype=np.uint16)  # a 12-bit detector image stored in 16 bits
    Image.fromarray(twelve).save(tmp_path / "twelve.png")
    r = read_image(tmp_path / "twelve.png")
    np.testing.assert_allclose(r.pixels, twelve / 4095.0, atol=1e-6)
    assert any("uses 12 bits" in n for n in r.notes)


def test_png_spacing_only_from_a_physical_unit(tmp_path):
    raw = gradient()
    Image.fromarray(raw).save(tmp_path / "phys.png", dpi=(254, 127))  # pHYs in metres
    assert read_image(tmp_path / "phys.png").pixel_spacing_mm == pytest.approx((0.2, 0.1), rel=1e-3)

    Image.fromarray(raw).save(tmp_path / "screen.png", dpi=(72, 72))
    r = read_image(tmp_path / "screen.png")
    assert r.pixel_spacing_mm is None and any("software default" in n for n in r.notes)


def test_jpeg(tmp_path):
    raw = gradient()
    Image.fromarray(raw).save(tmp_path / "a.jpg", quality=95)
    r = read_image(tmp_path / "a.jpg")
    check_radiograph(r, 48, 32)
    assert r.meta["format"] == "jpeg" and r.source_bit_depth == 8
    assert np.abs(r.pixels - raw / 255.0).mean() < 0.02


def test_colour_png_is_converted_with_a_note(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200  # red: luma 0.299 * 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    r = read_image(tmp_path / "red.png")
    check_radiograph(r, 48, 32)
    assert "colour image converted to grayscale" in r.notes
    assert r.meta["original_photometric"] == "RGB"
    np.testing.assert_allclose(r.pixels, 0.299 * 200 / 255, atol=1e-4)

    grey_rgb = np.repeat(gradient()[..., None], 3, axis=2)  # RGB file with equal channels
    Image.fromarray(grey_rgb).save(tmp_path / "grey.png")
    r = read_image(tmp_path / "grey.png")
    assert r.notes == [] and np.allclose(r.pixels, gradient() / 255.0, atol=1e-6)


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_tiff_8_and_16_bit_with_resolution(tmp_path, dtype, top):
    raw = gradient(top=top, dtype=dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, raw, resolution=(100, 50), resolutionunit="CENTIMETER")  # px per cm (x, y)
    r = read_image(path)
    check_radiograph(r, 48, 32)
    np.testing.assert_allclose(r.pixels, raw / top, atol=1e-6)
    assert r.source_bit_depth == np.dtype(dtype).itemsize * 8
    assert r.pixel_spacing_mm == pytest.approx((0.2, 0.1), rel=1e-6)  # (row, col)
    assert r.meta["format"] == "tiff"


def test_tiff_without_resolution_has_no_spacing(tmp_path):
    # Pillow reports a default 1 dpi for such files; that must not become 25.4 mm pixels.
    Image.fromarray(gradient()).save(tmp_path / "plain.tif")
    assert read_image(tmp_path / "plain.tif").pixel_spacing_mm is None


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 65535)])
def test_tiff_white_is_zero_is_inverted(tmp_path, dtype, top):
    raw = np.zeros((32, 48), dtype)
    raw[:, 24:] = top  # stored high = shown dark in MINISWHITE
    tifffile.imwrite(tmp_path / "mw.tif", raw, photometric="miniswhite")
    r = read_image(tmp_path / "mw.tif")
    assert r.meta["original_photometric"] == "MONOCHROME1"
    assert r.pixels[:, 24:].max() == 0.0 and r.pixels[:, :24].min() == 1.0


def test_tiff_pillow_cannot_read_goes_through_tifffile(tmp_path):
    raw = np.linspace(0, 1, 48 * 32, dtype=np.float16).reshape(32, 48)
    tifffile.imwrite(tmp_path / "half.tif", raw)
    r = read_image(tmp_path / "half.tif")
    check_radiograph(r, 48, 32)
    assert r.meta["reader"] == "tifffile"
    np.testing.assert_allclose(r.pixels, raw.astype(np.float32), atol=1e-3)


def test_multipage_tiff_uses_first_page(tmp_path):
    pages = np.stack([gradient(), 255 - gradient()])
    tifffile.imwrite(tmp_path / "two.tif", pages)
    r = read_image(tmp_path / "two.tif")
    np.testing.assert_allclose(r.pixels, gradient() / 255.0, atol=1e-6)
    assert any("first" in n for n in r.notes)


def test_bytes_and_file_objects_read_like_paths(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    from_path = read_image(tmp_path / "a.png").pixels
    np.testing.assert_array_equal(read_image(data, name="upload.png").pixels, from_path)
    np.testing.assert_array_equal(read_image(io.BytesIO(data)).pixels, from_path)
    with open(tmp_path / "a.png", "rb") as handle:
        np.testing.assert_array_equal(read_image(handle).pixels, from_path)
    # Content decides, not the extension.
    np.testing.assert_array_equal(read_image(data, name="mislabelled.dcm").pixels, from_path)


def test_to_uint8_and_to_pil():
    pixels = np.array([[0.0, 0.5, 1.0, 1.7, -0.2]], np.float32)
    np.testing.assert_array_equal(to_uint8(pixels), [[0, 128, 255, 255, 0]])
    r = Radiograph(pixels=np.clip(pixels, 0, 1), source_bit_depth=8, pixel_spacing_mm=None,
                   photometric="MONOCHROME2", original_size=(5, 1), notes=[], meta={})
    image = to_pil(r)
    assert image.mode == "L" and image.size == (5, 1)


# --- DICOM ---------------------------------------------------------------------------------------


def test_dicom_monochrome1_is_inverted_and_meta_is_deidentified(tmp_path):
    raw = np.full((32, 48), 100, np.uint16)
    raw[8:24, 8:24] = 4000  # bright stored value: in MONOCHROME1 that is dark
    path = write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1", PixelSpacing=[0.2, 0.1])
    r = read_image(path)
    check_radiograph(r, 48, 32)
    assert r.pixels[8:24, 8:24].max() == 0.0 and r.pixels[0, 0] == 1.0
    assert r.meta["original_photometric"] == "MONOCHROME1" and r.meta["format"] == "dicom"
    assert r.source_bit_depth == 12
    assert r.pixel_spacing_mm == (0.2, 0.1)
    tags = r.meta["dicom"]
    assert tags["modality"] == "DX" and tags["body_part_examined"] == "CSPINE" and tags["view_position"] == "LL"
    assert tags["rows"] == 32 and tags["columns"] == 48 and tags["bits_stored"] == 12
    text = json.dumps(r.meta)
    for secret in ("Doe", "SECRET-4711", "19610203", "20240517", "Saint Nowhere", path.name):
        assert secret not in text


def test_dicom_summary_is_public_and_leaves_identity_out(tmp_path):
    import pydicom

    ds = pydicom.dcmread(write_dicom(tmp_path / "a.dcm", gradient(top=4095, dtype=np.uint16)))
    summary = dicom_summary(ds)
    assert summary["modality"] == "DX" and summary["sop_class"].startswith("Digital X-Ray")
    assert "Doe" not in json.dumps(summary) and "19610203" not in json.dumps(summary)


def test_dicom_window_center_width(tmp_path):
    raw = gradient(top=4095, dtype=np.uint16)
    r = read_image(write_dicom(tmp_path / "w.dcm", raw, WindowCenter=2048, WindowWidth=1024))
    assert r.meta["display"].startswith("window")
    assert r.pixels[raw <= 1536].max() == 0.0
    assert r.pixels[raw > 2560].min() == 1.0
    inside = (raw > 1600) & (raw < 2500)
    np.testing.assert_allclose(r.pixels[inside], (raw[inside] - 1536) / 1024, atol=2e-3)
    # Data inside the window keeps the window's scale: no stretching to the data's own range.
    narrow = gradient(top=500, dtype=np.uint16) + 1800
    r = read_image(write_dicom(tmp_path / "n.dcm", narrow, WindowCenter=2048, WindowWidth=1024))
    np.testing.assert_allclose(r.pixels, (narrow - 1536) / 1024, atol=2e-3)


def test_dicom_rescale_then_window(tmp_path):
    raw = np.array([[0, 500, 1000, 1500]], np.uint16)  # rescaled: -1000, 0, 1000, 2000
    path = write_dicom(tmp_path / "r.dcm", raw, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=2000)
    r = read_image(path)
    np.testing.assert_allclose(r.pixels[0], [0.0, 0.0, 0.5, 1.0], atol=1e-3)


def test_dicom_without_window_uses_min_max_and_imager_spacing(tmp_path):
    raw = gradient(top=3000, dtype=np.uint16) + 500
    r = read_image(write_dicom(tmp_path / "m.dcm", raw, ImagerPixelSpacing=[0.15, 0.15]))
    assert r.pixels.min() == 0.0 and r.pixels.max() == 1.0
    assert r.pixel_spacing_mm == (0.15, 0.15)
    assert any("ImagerPixelSpacing" in n for n in r.notes)
    assert any("min-max" in n for n in r.notes)


def test_multiframe_dicom_uses_first_frame(tmp_path):
    frames = np.stack([gradient(top=4095, dtype=np.uint16), np.full((32, 48), 7, np.uint16), np.zeros((32, 48))])
    r = read_image(write_dicom(tmp_path / "mf.dcm", frames))
    check_radiograph(r, 48, 32)
    assert "multi-frame DICOM (3 frames): first frame used" in r.notes
    np.testing.assert_allclose(r.pixels, frames[0] / 4095.0, atol=1e-6)


def test_dicom_without_preamble_needs_a_dcm_name(tmp_path):
    raw = gradient(top=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "bare.dcm", raw, preamble=False)
    data = path.read_bytes()
    assert data[128:132] != b"DICM"
    check_radiograph(read_image(path), 48, 32)
    check_radiograph(read_image(data, name="upload.DCM"), 48, 32)
    with pytest.raises(ImageReadError, match="not a supported image"):
        read_image(data, name="upload.bin")


def test_compressed_dicom_decodes_or_names_the_compression():
    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    path = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if get_decoder(JPEGLSLossless).is_available:
        check_radiograph(read_image(path), 64, 64)
    else:
        with pytest.raises(ImageReadError, match="compressed with 'JPEG-LS Lossless.*not supported here"):
            read_image(path)


# --- bad input -----------------------------------------------------------------------------------


def test_empty_and_non_image_input():
    with pytest.raises(ImageReadError, match="x.png: the file is empty"):
        read_image(b"", name="x.png")
    noise = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ImageReadError, match="noise.png: not a supported image"):
        read_image(noise, name="noise.png")
    with pytest.raises(ImageReadError, match="noise.dcm: is not a readable DICOM"):
        read_image(noise, name="noise.dcm")


def test_missing_path_folder_and_text_mode(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)
    (tmp_path / "t.txt").write_text("hello")
    with open(tmp_path / "t.txt") as text_handle, pytest.raises(ImageReadError, match="binary mode"):
        read_image(text_handle)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    with pytest.raises(ImageReadError, match="cut.png: .*truncated or corrupt"):
        read_image(data[: len(data) // 2], name="cut.png")


def test_truncated_dicom(tmp_path):
    data = write_dicom(tmp_path / "a.dcm", gradient(top=4095, dtype=np.uint16)).read_bytes()
    with pytest.raises(ImageReadError, match="cut.dcm: .*truncated"):
        read_image(data[:-500], name="cut.dcm")


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", gradient(top=4095, dtype=np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="nopix.dcm: this DICOM .*holds no image \\(no pixel data\\)"):
        read_image(tmp_path / "nopix.dcm")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="48 x 32 = 1,536 pixels, over the limit of 1,000"):
        read_image(tmp_path / "a.png", max_pixels=1000)
    for side in (12_000, 100_000):  # over our default limit; the larger also over Pillow's own
        with pytest.raises(ImageReadError, match="decompression bomb"):
            read_image(png_header(side, side), name="bomb.png")
    # A DICOM header claiming 60000 x 60000 with almost no data: refused before pydicom decodes.
    path = write_dicom(tmp_path / "big.dcm", gradient(top=4095, dtype=np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="60000 x 60000 .* over the limit"):
        read_image(tmp_path / "big.dcm")


# --- every file pydicom ships --------------------------------------------------------------------

SURVEY = textwrap.dedent(
    """
    import collections, json, os, sys, warnings
    warnings.simplefilter("ignore")
    sys.path.insert(0, sys.argv[1])
    from pydicom.data import get_testdata_files
    from core.data.imaging import ImageReadError, read_image

    REASONS = ("no pixel data", "not a supported image", "not supported here", "could not be decoded",
               "truncated", "no valid Rows/Columns")
    loaded, refused = [], collections.defaultdict(list)
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        name = os.path.relpath(path, os.path.dirname(get_testdata_files("CT_small.dcm")[0]))
        try:
            r = read_image(path)
        except ImageReadError as exc:  # anything else escapes and fails the run
            assert str(exc).startswith(path), exc
            refused[next((k for k in REASONS if k in str(exc)), str(exc))].append(name)
            continue
        h, w = r.pixels.shape
        assert r.pixels.dtype.name == "float32" and r.original_size == (w, h), name
        assert 0.0 <= float(r.pixels.min()) and float(r.pixels.max()) <= 1.0, name
        json.dumps(r.meta)
        loaded.append(name)
    print(json.dumps({"loaded": loaded, "refused": refused}))
    """
)


def test_every_pydicom_test_file_loads_or_is_refused_cleanly(tmp_path):
    script = tmp_path / "survey.py"
    script.write_text(SURVEY)
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    # A separate process, so a crash in a decoder (segfault) fails this test instead of pytest.
    done = subprocess.run([sys.executable, str(script), str(ROOT)], cwd=run_dir, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    loaded, refused = result["loaded"], result["refused"]
    counts = {reason: len(files) for reason, files in refused.items()}
    print(f"pydicom test files: {len(loaded)} loaded, {sum(counts.values())} refused: {counts}")
    assert {"CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
            "SC_rgb_rle.dcm", "examples_palette.dcm", "dicomdirtests/77654033/CR1/6154"} <= set(loaded)
    assert "MR_truncated.dcm" in refused["truncated"]
    assert {"rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm"} <= set(refused["no pixel data"])
    assert {"README.txt", "zipMR.gz", "test1.json"} <= set(refused["not a supported image"])
    assert set(refused) <= {"no pixel data", "not a supported image", "not supported here",
                            "could not be decoded", "truncated", "no valid Rows/Columns"}, refused
    assert len(loaded) >= 60
    assert list(run_dir.iterdir()) == []  # reading wrote nothing into the working folder
