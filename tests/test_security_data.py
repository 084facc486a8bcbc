"""Data in, as an attacker or a careless user brings it (issue 20, parts 1 and 4): every DICOM is de-identified
whatever importer finds it, uploads leave no scratch behind even after a kill, a killed import leaves no orphan
image, and small hostile files (pixel bombs, deflate bombs, YAML alias bombs, zip bombs) are refused from their
structure with one line, before anything large is allocated."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import settings
from core.cli import main as cli_main
from core.data import archive, importers
from core.data.archive import ArchiveError
from core.data.datasets import DatasetError
from core.data.imaging import ImageReadError, read_image
from core.data.store import AnnotationStore

ROOT = Path(__file__).resolve().parents[1]
NAME, MRN, PREAMBLE = "DOE^JOHN", "MRN-778899", b"PREAMBLE-SECRET-DOE-JOHN"
FILE_STEM = "Doe_John_19610412"  # identifying file name, as exported by many PACS
IDENTIFYING = (b"DOE", b"MRN-778899", b"PREAMBLE-SECRET", FILE_STEM.encode(), b"19610412")


def dicom_bytes(rows: int = 64, columns: int = 64, *, pixels: bytes | None = None, deflated: bool = False,
                frames: int | None = None) -> bytes:
    """A real DICOM with an identifying name, id, birth date and preamble."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = PREAMBLE.ljust(128, b"!")
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, MRN, "19610412"
    ds.Modality, ds.BurnedInAnnotation = "CR", "NO"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames:
        ds.NumberOfFrames = frames
    if pixels is None:
        pixels = (np.random.default_rng(0).integers(0, 4096, (rows, columns))).astype(np.uint16).tobytes()
    ds.PixelData = pixels
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deflated_liar(pixel_bytes: int) -> bytes:
    """A deflated DICOM whose header says 64 x 64 but whose pixel data inflates to ``pixel_bytes`` zeros, built
    in chunks (the whole never exists in memory): the shape of a 1 MB file that inflates to GBs."""
    small = dicom_bytes(deflated=True, pixels=b"")
    meta_end = 132 + 12 + int.from_bytes(small[140:144], "little")  # (0002,0000) gives the meta group's length
    body = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    body = body[:body.rindex(b"\xe0\x7f\x10\x00")]  # up to the (empty) PixelData element
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [deflater.compress(body + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little"))]
    zeros = bytes(1 << 20)
    chunks += [deflater.compress(zeros) for _ in range(pixel_bytes >> 20)]
    chunks.append(deflater.flush())
    return small[:meta_end] + b"".join(chunks)


@pytest.fixture()
def store(workspace):
    with AnnotationStore() as opened:
        yield opened


def stored_files(workspace: Path) -> list[Path]:
    images = workspace / "images"
    return sorted(p for p in images.rglob("*") if p.is_file()) if images.exists() else []


def assert_deidentified(workspace: Path, store: AnnotationStore, dataset: str) -> None:
    records = store.images(dataset)
    assert records, "nothing was imported"
    for record in records:
        data = (workspace / record.path).read_bytes()
        assert data[128:132] == b"DICM" and data[:128] == bytes(128), "preamble not cleared"
        for secret in IDENTIFYING:
            assert secret not in data, f"{secret!r} survived in the stored file"
        assert record.patient_id.startswith("anon-"), record.patient_id
        assert FILE_STEM not in record.source and "Doe" not in record.source, record.source
        assert record.path.endswith(".dcm")
        for secret in IDENTIFYING:
            assert secret.decode() not in json.dumps(record.meta)


# ---------------------------------------------------------------- 1. de-identification on every path


def layout(kind: str, root: Path) -> Path:
    """The same identifying DICOM in each importer's layout; returns what to import."""
    data = dicom_bytes()
    if kind == "folder":
        (root / "normal").mkdir(parents=True)
        (root / "normal" / f"{FILE_STEM}.dcm").write_bytes(data)
        return root
    if kind == "csv":
        root.mkdir(parents=True)
        (root / f"{FILE_STEM}.dcm").write_bytes(data)
        (root / "manifest.csv").write_text(f"path,label,patient_id\n{FILE_STEM}.dcm,normal,{FILE_STEM}\n")
        return root / "manifest.csv"
    if kind == "yolo":
        (root / "images" / "train").mkdir(parents=True)
        (root / "labels" / "train").mkdir(parents=True)
        (root / "images" / "train" / f"{FILE_STEM}.dcm").write_bytes(data)
        (root / "labels" / "train" / f"{FILE_STEM}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
        (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: {0: normal}\n")
        return root
    if kind == "coco":
        root.mkdir(parents=True)
        (root / f"{FILE_STEM}.dcm").write_bytes(data)
        coco = {"images": [{"id": 1, "file_name": f"{FILE_STEM}.dcm", "patient_id": FILE_STEM}],
                "annotations": [{"id": 1, "image_id": 1, "bbox": [4, 4, 40, 40], "category_id": 0}],
                "categories": [{"id": 0, "name": "normal"}]}
        (root / "annotations.json").write_text(json.dumps(coco))
        return root / "annotations.json"
    if kind == "csxa":
        (root / "datasets-PNG").mkdir(parents=True)
        (root / "datasets-PNG" / "0001_49.dcm").write_bytes(data)
        (root / "datasets.csv").write_text("CSXA sheet,\nNumber,Curvature: 1.Lordotic 2.Straight\n1,1\n")
        return root
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["folder", "csv", "yolo", "coco", "csxa"])
def test_every_importer_stores_a_dicom_only_de_identified(workspace, tmp_path, store, kind):
    source = layout(kind, tmp_path / kind)
    report = importers._import_kind(kind, source, None, dataset=kind, store=store)
    assert report.imported == 1, report.format()
    assert_deidentified(workspace, store, kind)


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_data_page_zip_upload_stores_a_dicom_only_de_identified(workspace, tmp_path, store, kind):
    source = layout(kind, tmp_path / kind)
    root = source if source.is_dir() else source.parent
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as zipped:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zipped.write(path, path.relative_to(root).as_posix())
    report = importers.import_uploads(kind, [(f"{FILE_STEM}.zip", upload.getvalue())], dataset="upload", store=store)
    assert report.imported == 1, report.format()
    assert_deidentified(workspace, store, "upload")
    assert list((workspace / "uploads").iterdir()) == []


def test_import_dicom_clears_the_preamble(workspace, tmp_path, store):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{FILE_STEM}.dcm").write_bytes(dicom_bytes())
    report = importers.import_dicom(tmp_path / "in", dataset="dicom", store=store)
    assert report.imported == 1
    assert_deidentified(workspace, store, "dicom")


def test_a_stale_scratch_folder_from_a_killed_import_is_swept_by_the_next(workspace, tmp_path, store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names a process that is gone, as after a kill -9
    uploads = workspace / "uploads"
    stale = [uploads / f"import-{dead.pid}-ab12cd34", uploads / "upload-k3j4h5g6"]  # the second: before pids
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / f"{FILE_STEM}.dcm").write_bytes(dicom_bytes())
    live = uploads / f"import-{os.getpid()}-livelive"  # an import running now in this process: kept
    live.mkdir()
    upload = io.BytesIO()
    with zipfile.ZipFile(upload, "w") as zipped:
        zipped.writestr(f"normal/{FILE_STEM}.dcm", dicom_bytes())

    importers.import_archive("folder", upload.getvalue(), name="films.zip", store=store)

    assert sorted(p.name for p in uploads.iterdir()) == [live.name]


KILLED_IMPORT = textwrap.dedent("""
    import os, signal, sys
    from core.data import importers
    from core.data.store import AnnotationStore

    def killed(self):  # the files are written, the rows not yet: kill -9 here
        os.kill(os.getpid(), signal.SIGKILL)

    AnnotationStore.batch = killed
    importers.import_folder(sys.argv[1], dataset="killed")
""")


def test_a_killed_import_leaves_no_orphan_image(workspace, tmp_path, store):
    films = tmp_path / "films" / "normal"
    films.mkdir(parents=True)
    for n in range(3):
        Image.fromarray(np.random.default_rng(n).integers(0, 255, (64, 64), dtype=np.uint8)).save(films / f"{n}.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(films.parent)], env=env, cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert store.images() == []

    (tmp_path / "next" / "normal").mkdir(parents=True)
    Image.fromarray(np.full((64, 64), 7, np.uint8) + np.eye(64, dtype=np.uint8)).save(tmp_path / "next" / "normal" / "x.png")
    importers.import_folder(tmp_path / "next", dataset="next", store=store)

    known = {record.path for record in store.images()}
    assert {p.relative_to(workspace).as_posix() for p in stored_files(workspace)} == known


def test_a_commit_killed_before_its_rename_is_finished_by_the_next_import(workspace, tmp_path, store):
    (tmp_path / "a" / "normal").mkdir(parents=True)
    Image.fromarray(np.eye(64, dtype=np.uint8) * 200).save(tmp_path / "a" / "normal" / "a.png")
    importers.import_folder(tmp_path / "a", dataset="a", store=store)
    (record,) = store.images("a")
    final = workspace / record.path
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    final.rename(final.with_name(f"{final.name}.{dead.pid}.part"))  # the row is committed, the file not renamed

    assert importers.sweep_partial_images(store) == []
    assert final.is_file() and stored_files(workspace) == [final]


# ---------------------------------------------------------------- 4. budgets


def test_budget_settings_have_defaults_and_are_checked(monkeypatch):
    assert settings.max_image_pixels() == 50_000_000
    assert settings.max_file_bytes() == 256 * 1024**2 and settings.max_zip_bytes() == 2048 * 1024**2
    monkeypatch.setenv("CERVICURVE_MAX_IMAGE_MPX", "0")
    monkeypatch.setenv("CERVICURVE_MAX_FILE_MB", "lots")
    with pytest.raises(settings.SettingsError) as error:
        settings.check()
    assert "CERVICURVE_MAX_IMAGE_MPX='0'" in str(error.value) and "CERVICURVE_MAX_FILE_MB='lots'" in str(error.value)


def test_an_image_over_the_pixel_budget_is_refused_from_its_header(monkeypatch, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (1200, 1000)).save(path)
    assert read_image(path).original_size == (1200, 1000)
    monkeypatch.setenv("CERVICURVE_MAX_IMAGE_MPX", "1")
    with pytest.raises(ImageReadError, match="over the limit of 1,000,000; refused before decoding"):
        read_image(path)


def test_a_colour_image_is_converted_in_float32_never_float64():
    rgb = np.random.default_rng(0).integers(0, 255, (1000, 1500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=0)
    data = buffer.getvalue()
    tracemalloc.start()
    try:
        radiograph = read_image(data, name="colour.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert radiograph.pixels.dtype == np.float32
    expected = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255
    assert np.abs(radiograph.pixels - expected).max() < 1e-5
    # 1.5 Mpx: float64 RGB alone would be 36 MB; uint8 RGB + float32 gray + one float32 channel is ~17 MB.
    assert peak < 26 * 1024**2, peak / 1024**2


def test_a_dicom_declaring_more_pixel_data_than_the_budget_is_refused_before_decoding(workspace, tmp_path, store):
    # 4000 x 4000 x 20 frames x 16 bits = 610 MiB declared, 16 Mpx a frame: only the byte budget catches it.
    bomb = dicom_bytes(4000, 4000, pixels=b"\0" * 64, frames=20)
    with pytest.raises(ImageReadError, match="declares 610.4 MiB of pixel data.*CERVICURVE_MAX_FILE_MB"):
        read_image(bomb, name="bomb.dcm")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.dcm").write_bytes(bomb)
    report = importers.import_dicom(tmp_path / "in", dataset="d", store=store)
    assert report.imported == 0 and "CERVICURVE_MAX_FILE_MB" in report.skipped[0][1]
    assert stored_files(workspace) == []


def test_a_deflated_dicom_is_inflated_only_up_to_the_budget(workspace, tmp_path, store, monkeypatch):
    good = dicom_bytes(deflated=True)
    assert read_image(good, name="good.dcm").original_size == (64, 64)
    bomb = deflated_liar(64 * 1024**2)  # 64 KB on disk, 64 MiB inflated, 8 KiB declared (64 x 64 x 16 bit)
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match="inflates to more than its header declares"):
            read_image(bomb, name="bomb.dcm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024**2, peak / 1024**2  # stopped near what the header declares, not after 64 MiB
    # A header that cannot be parsed from the first inflated MiB: the byte budget is the cap.
    monkeypatch.setenv("CERVICURVE_MAX_FILE_MB", "2")
    monkeypatch.setattr("core.data.imaging._HEADER_PEEK", 16)
    with pytest.raises(ImageReadError, match="inflates past 2.0 MiB"):
        read_image(bomb, name="bomb.dcm")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bomb.dcm").write_bytes(bomb)
    report = importers.import_dicom(tmp_path / "in", dataset="d", store=store)
    assert report.imported == 0 and "inflates past" in report.skipped[0][1]


BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        'b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
        'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n')  # 729 items: tiny, since the refusal is on structure


def test_a_yaml_alias_bomb_in_a_yolo_data_yaml_is_refused_with_one_line(workspace, tmp_path, capsys):
    source = layout("yolo", tmp_path / "yolo")
    (source / "data.yaml").write_text(BOMB + "path: .\ntrain: images/train\nnames: *c\n")
    with pytest.raises(DatasetError, match="anchors and aliases"):
        importers.import_yolo(source, dataset="y")
    assert cli_main(["import", "yolo", str(source), "--dataset", "y"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "aliases" in out and "Traceback" not in out
    assert stored_files(workspace) == []


def test_a_yaml_alias_bomb_in_a_run_config_is_refused(tmp_path):
    from core.runs.configs import ConfigError, read_config_source

    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB + "task: classify\n")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        read_config_source(config)


def test_a_zip_member_over_the_file_budget_is_refused_from_its_header(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("CERVICURVE_MAX_FILE_MB", "1")
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zipped:  # stored: no ratio, only the size
        zipped.writestr("normal/a.png", os.urandom(2 * 1024**2))
    with pytest.raises(ArchiveError, match="allowed for one file"):
        archive.extract_zip(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_member_that_inflates_more_than_the_ratio_is_refused(workspace, tmp_path, capsys):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("normal/a.png", bytes(4 * 1024**2))  # 4 MiB of zeros: ~1000:1
    with pytest.raises(ArchiveError, match="a decompression bomb"):
        archive.extract_zip(path, tmp_path / "out")
    assert cli_main(["import", "folder", str(path), "--dataset", "z"]) == 2
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "decompression bomb" in out
    assert stored_files(workspace) == [] and list((workspace / "uploads").iterdir()) == []


def test_an_image_file_over_the_file_budget_is_skipped_unread(workspace, tmp_path, store, monkeypatch):
    monkeypatch.setenv("CERVICURVE_MAX_FILE_MB", "1")
    (tmp_path / "in" / "normal").mkdir(parents=True)
    (tmp_path / "in" / "normal" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024**2))
    report = importers.import_folder(tmp_path / "in", dataset="h", store=store)
    assert report.imported == 0 and "CERVICURVE_MAX_FILE_MB" in report.skipped[0][1], report.format()
    with pytest.raises(ImageReadError, match="over the 1.0 MiB limit"):
        read_image(tmp_path / "in" / "normal" / "huge.png")
