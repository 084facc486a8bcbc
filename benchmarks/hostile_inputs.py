"""Small hostile files through the CLI: the peak memory of each refusal (issue 20: each under 1 GB RSS, one line).

    .venv/bin/python benchmarks/hostile_inputs.py [--keep DIR]

Builds each file (streamed: none of them is ever inflated here), then runs ``python -m core predict FILE`` or
``python -m core import KIND FILE`` in a fresh workspace (a tiny promoted classifier for predict, as
tests/test_app_predict.py trains one) and samples the child's RSS with psutil every 5 ms; the exact peak is the
kernel's ru_maxrss of the child. Also checked: the command printed one line and left the workspace as it was (no
image, no database row, nothing under uploads/). A child over 2.5 GB is killed (the machine is shared).
Writes benchmarks/results/hostile_inputs.md.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "hostile_inputs.md"
KILL_AT = 2.5 * 1024**3
MiB = 1024**2
# Before: what issue 20 measured on the code these budgets replaced.
BEFORE = {"png": "4.4 GB (float64 conversion)", "dicom_liar": "inflated whole by pydicom (1 MB file: 3 GB)",
          "dicom_header": "inflated whole by pydicom (1 MB file: 3 GB)", "yaml": "1.9-3.9 GB, 2 min, \"succeeds\"",
          "zip": "1.1 GB (member read whole)"}


# ---------------------------------------------------------------- the hostile files, built in chunks


def png_bomb(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """An all-black RGB PNG of width x height: zlib turns the 300 MB of rows into ~300 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    deflater = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0 + RGB zeros
    idat = b"".join(deflater.compress(row) for _ in range(height)) + deflater.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def deflated_dicom(path: Path, rows: int, columns: int, pixel_bytes: int) -> Path:
    """A Deflated Explicit VR Little Endian DICOM whose header says rows x columns (16 bit) and whose PixelData
    inflates to ``pixel_bytes`` zeros; written in 1 MiB chunks."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "DOE^JOHN", "MRN-1", "CR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = b""
    small = io.BytesIO()
    ds.save_as(small, enforce_file_format=True)
    small = small.getvalue()
    meta_end = 132 + 12 + int.from_bytes(small[140:144], "little")  # (0002,0000) holds the meta group's length
    body = zlib.decompress(small[meta_end:], -zlib.MAX_WBITS)
    body = body[:body.rindex(b"\xe0\x7f\x10\x00")]  # up to the empty PixelData element
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(MiB)
    with path.open("wb") as out:
        out.write(small[:meta_end])
        out.write(deflater.compress(body + b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")))
        for _ in range(pixel_bytes // MiB):
            out.write(deflater.compress(zeros))
        out.write(deflater.flush())
    return path


YAML_BOMB = "\n".join(
    [f'a: &a [{",".join(["lol"] * 9)}]']
    + [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]) + "\n"


def yolo_bomb(folder: Path) -> Path:
    """A YOLO set whose data.yaml is a billion laughs (9 levels: 9^9 items once expanded)."""
    from PIL import Image

    (folder / "images" / "train").mkdir(parents=True)
    (folder / "labels" / "train").mkdir(parents=True)
    Image.new("L", (64, 64), 90).save(folder / "images" / "train" / "a.png")
    (folder / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (folder / "data.yaml").write_text(YAML_BOMB + "train: images/train\nnames: *i\n")
    return folder


def zip_bomb(path: Path, member_bytes: int = 1024**3) -> Path:
    """A zip holding normal/film.png: ``member_bytes`` of zeros, about 1 MB compressed."""
    zeros = bytes(MiB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("normal/film.png", "w", force_zip64=True) as member:
            for _ in range(member_bytes // MiB):
                member.write(zeros)
    return path


def normal_png(path: Path) -> Path:
    from PIL import Image

    from core.data.phantom import generate_case

    Image.fromarray(generate_case(3, size=1024, curvature_class="normal").image).save(path)
    return path


# ---------------------------------------------------------------- measuring


def run(command: list[str], home: Path) -> dict:
    env = {**os.environ, "CERVICURVE_HOME": str(home), "OMP_WAIT_POLICY": "PASSIVE", "CERVICURVE_PRELOAD": "0"}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "core", *command], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watched, sampled, killed = psutil.Process(child.pid), 0, False
    while True:
        # wait4 reaps the child with its own rusage: ru_maxrss is this child's exact peak.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        try:
            rss = watched.memory_info().rss
        except psutil.Error:
            rss = 0
        sampled = max(sampled, rss)
        if rss > KILL_AT and not killed:
            child.kill()
            killed = True
        time.sleep(0.005)
    seconds = time.perf_counter() - started
    output = child.stdout.read().decode(errors="replace")
    child.stdout.close()
    lines = [line for line in output.splitlines() if line.strip()]
    return {"rc": os.waitstatus_to_exitcode(status), "seconds": seconds, "sampled": sampled,
            "peak": usage.ru_maxrss * 1024, "killed": killed, "lines": lines}


def workspace_unchanged(home: Path, before: set[str]) -> str:
    db = home / "cervicurve.db"
    rows = 0
    if db.exists():
        with sqlite3.connect(db) as conn:
            try:
                rows = conn.execute("select count(*) from images").fetchone()[0]
            except sqlite3.Error:
                rows = 0
    images = sorted(p for p in (home / "images").rglob("*") if p.is_file()) if (home / "images").exists() else []
    uploads = sorted((home / "uploads").iterdir()) if (home / "uploads").exists() else []
    now = {p.relative_to(home).as_posix() for p in images}
    new = now - before
    return "yes" if rows == 0 and not new and not uploads else f"no ({rows} rows, {len(new)} files, {len(uploads)} in uploads)"


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def build(scratch: Path) -> None:
    """The workspace with a tiny promoted classifier, and the hostile files (in their own process: the parent
    stays small, since a child's ru_maxrss starts from its parent's size at the fork)."""
    from tests.helpers.models import promote_tiny_classifier

    promote_tiny_classifier(scratch / "workspace")
    (scratch / "dicom").mkdir(exist_ok=True)  # import dicom takes a folder
    normal_png(scratch / "film.png")
    png_bomb(scratch / "bomb.png")
    deflated_dicom(scratch / "dicom" / "liar.dcm", 512, 512, 3 * 1024**3)
    deflated_dicom(scratch / "header.dcm", 24_000, 24_000, 1024**3)
    yolo_bomb(scratch / "yolo")
    zip_bomb(scratch / "bomb.zip")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the files here and keep them")
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # the child that builds them
    args = parser.parse_args()
    if args.build:
        build(args.build)
        return 0

    with tempfile.TemporaryDirectory(prefix="hostile-") as scratch:
        scratch = Path(args.keep or scratch)
        scratch.mkdir(parents=True, exist_ok=True)
        home = scratch / "workspace"
        print("training a tiny classifier for predict and building the hostile files ...", flush=True)
        subprocess.run([sys.executable, __file__, "--build", str(scratch)], check=True,
                       env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        cases = [
            ("baseline", "1024 px phantom PNG (a normal film, for scale)", scratch / "film.png", ["predict"]),
            ("png", "10000 x 10000 RGB PNG", scratch / "bomb.png", ["predict"]),
            ("dicom_liar", "deflated DICOM, header 512 x 512, pixel data inflating to 3 GiB",
             scratch / "dicom" / "liar.dcm", ["predict"]),
            ("dicom_liar", "the same, imported", scratch / "dicom", ["import", "dicom"]),
            ("dicom_header", "deflated DICOM declaring 24000 x 24000 x 16 bit (1.1 GB)", scratch / "header.dcm",
             ["predict"]),
            ("yaml", "YOLO data.yaml alias bomb (9 levels, 9^9 items)", scratch / "yolo", ["import", "yolo"]),
            ("zip", "zip with one 1 GiB member (zeros)", scratch / "bomb.zip", ["import", "folder"]),
        ]
        rows, floor = [], 0
        for key, what, path, verb in cases:
            command = [*verb, str(path)] + (["--dataset", "hostile"] if verb[0] == "import" else [])
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            before = ({p.relative_to(home).as_posix() for p in (home / "images").rglob("*") if p.is_file()}
                      if (home / "images").exists() else set())
            print(f"{what}: python -m core {' '.join(command[:2])} ...", flush=True)
            result = run(command, home)
            unchanged = workspace_unchanged(home, before) if key != "baseline" else "-"
            peak = max(result["peak"], result["sampled"])  # the sample cannot exceed ru_maxrss; kept as a check
            message = result["lines"][-1] if result["lines"] else ""
            floor = peak if key == "baseline" else floor
            rows.append((what, f"`{' '.join(['python -m core', *command[:2]])}`", f"{size / 1e3:,.1f} KB",
                         mb(peak) + (" (killed)" if result["killed"] else ""), f"{result['seconds']:.1f}",
                         str(len(result["lines"])), unchanged, BEFORE.get(key, "-") if key != "baseline" else "-",
                         message.replace(str(scratch), "…").replace("|", "/")[:220]))
            print(f"  peak {mb(peak)}, {result['seconds']:.1f} s, rc {result['rc']}: {message[:160]}", flush=True)

    lines = [
        "# Hostile inputs: peak memory of each refusal",
        "",
        f"`benchmarks/hostile_inputs.py`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared with other jobs), Python {platform.python_version()}. Each command runs in a "
        "fresh process on a workspace holding a tiny promoted classifier; peak RSS is the larger of the kernel's "
        "ru_maxrss for the child and psutil samples every 5 ms. Budgets at their defaults: CERVICURVE_MAX_IMAGE_MPX=50, "
        "CERVICURVE_MAX_FILE_MB=256, CERVICURVE_MAX_ZIP_MB=2048, YAML anchors/aliases refused.",
        "",
        "| input | command | file size | peak RSS | seconds | output lines | workspace unchanged | before (issue 20) | the line printed |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", f"Peak RSS includes the interpreter and its imports. `predict` loads torch (about 510 MB on its own "
              f"with this CUDA build) and the models before it reads an image, so its floor is the baseline row, "
              f"{mb(floor)} on a normal film: the hostile files add nothing above it, since each is refused from its "
              "header. The import paths load no model. \"Output lines\": predict also prints its models line on "
              "stderr. \"Workspace unchanged\": no image row in the database, no new file under images/, nothing "
              "left under uploads/."]
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)} (peak of this measuring process: "
          f"{mb(psutil.Process().memory_info().rss)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
