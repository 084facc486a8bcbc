"""Safe extraction of uploaded zip archives (a dataset as a folder tree, CSV + images, YOLO, COCO, CSXA).

An upload is untrusted: a member may try to write outside the target folder (``../``, an absolute
path, a drive letter), be a symlink pointing anywhere, or be a "zip bomb" that declares small sizes
and inflates to fill the disk. Every member is checked before anything is written (its declared size
against ``settings.max_file_bytes()``, the total against ``settings.max_zip_bytes()``, its compression
ratio against ``MAX_RATIO``), members are streamed to disk in chunks with the bytes counted again while
inflating (never read whole), and extraction goes to a staging folder that is removed on any refusal, so a
refused archive leaves nothing behind.

Uploads are unpacked into a ``scratch_folder`` under ``<workspace>/uploads``: removed on every exit path,
and folders a killed process left there are swept before the next one is made.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from core import settings

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3  # the default of settings.max_zip_bytes() (CERVICURVE_MAX_ZIP_MB)
# Deflate tops out near 1000:1 on zeros; images, DICOM and JSON compress 1-20:1. A member over RATIO_FLOOR bytes
# that claims more than MAX_RATIO:1 is a bomb, refused from its header.
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 20
SCRATCH_KINDS = ("import", "upload", "phantoms")
# <kind>-<pid>-<random> (the pid of the process using it); <kind>-<random> from versions before the pid was kept
_SCRATCH_NAME = re.compile(rf"({'|'.join(SCRATCH_KINDS)})-(?:(\d+)-)?[A-Za-z0-9_]+")
# Finder and Explorer litter: never data, and their "._x.png" twins would fail as images.
_JUNK_DIRS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class ArchiveError(ValueError):
    """The archive is unreadable, unsafe, or does not hold the layout asked for; the message says why."""


def extract_zip(source: str | Path | bytes | BinaryIO, dest: str | Path, max_members: int = MAX_MEMBERS,
                max_total_bytes: int | None = None, max_member_bytes: int | None = None) -> list[Path]:
    """Extract a zip into ``dest`` (created when missing) and return the extracted files, in archive order.

    Raises ArchiveError, writing nothing, when the archive is not a zip, is encrypted, has more than
    ``max_members`` members, inflates to more than ``max_total_bytes`` (default ``settings.max_zip_bytes()``)
    or holds a member over ``max_member_bytes`` (default ``settings.max_file_bytes()``) or compressed more than
    ``MAX_RATIO``:1, or a member whose path escapes ``dest`` or that is a symlink or other special file.
    """
    max_total_bytes = settings.max_zip_bytes() if max_total_bytes is None else max_total_bytes
    max_member_bytes = settings.max_file_bytes() if max_member_bytes is None else max_member_bytes
    dest = Path(dest)
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None
    with archive:
        members = _checked_members(archive, max_members, max_total_bytes, max_member_bytes)
        _check_no_folder_clash(dest, members)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest))
        try:
            _inflate(archive, members, staging, max_total_bytes, max_member_bytes)
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                shutil.rmtree(dest, ignore_errors=True)
            if isinstance(exc, ArchiveError):
                raise
            if isinstance(exc, (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError)):
                raise ArchiveError(f"the archive is damaged or could not be written out ({exc})") from None
            raise
        try:
            return _move_into(staging, dest, members)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _checked_members(archive: zipfile.ZipFile, max_members: int, max_total_bytes: int,
                     max_member_bytes: int) -> list[tuple[zipfile.ZipInfo, str]]:
    """Every file member with its safe relative path; directories and OS junk are dropped."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"the archive has {len(infos)} members, more than the {max_members} allowed")
    declared = sum(info.file_size for info in infos)
    if declared > max_total_bytes:
        raise ArchiveError(f"the archive would inflate to {_size(declared)}, more than the {_size(max_total_bytes)} allowed")
    members, seen = [], set()
    for info in infos:
        relative = _safe_relative(info.filename)
        # Unix file type bits; zips made elsewhere (or by Python's writestr) leave them 0.
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type == stat.S_IFLNK:
            raise ArchiveError(f"{info.filename!r} is a symbolic link; links are refused")
        if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{info.filename!r} is a special file (device, pipe or socket); refused")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{info.filename!r} is encrypted; upload an archive without a password")
        if info.is_dir() or relative is None:
            continue
        if info.file_size > max_member_bytes:
            raise ArchiveError(f"{info.filename!r} would inflate to {_size(info.file_size)}, more than the "
                               f"{_size(max_member_bytes)} allowed for one file (CERVICURVE_MAX_FILE_MB)")
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ArchiveError(f"{info.filename!r} is compressed {info.file_size // max(info.compress_size, 1):,}:1 "
                               f"(more than {MAX_RATIO}:1): a decompression bomb, not a dataset; refused")
        parts = PurePosixPath(relative).parts
        if parts[0] in _JUNK_DIRS or parts[-1] in _JUNK_FILES:
            continue
        if relative in seen:
            raise ArchiveError(f"{info.filename!r} appears twice in the archive; refused")
        seen.add(relative)
        members.append((info, relative))
    return members


def _safe_relative(name: str) -> str | None:
    """The member's path relative to the target folder, or ArchiveError when it would leave it."""
    normalised = name.replace("\\", "/")  # a zip made on Windows may use backslashes
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or (path.parts and ":" in path.parts[0]):
        raise ArchiveError(f"{name!r} has an absolute path; members must stay inside the archive's folder")
    if ".." in path.parts:
        raise ArchiveError(f"{name!r} points outside the archive's folder ('..'); refused")
    parts = [part for part in path.parts if part not in ("", ".")]
    return "/".join(parts) or None


def _inflate(archive: zipfile.ZipFile, members, staging: Path, max_total_bytes: int, max_member_bytes: int) -> None:
    written = 0
    root = staging.resolve()
    for info, relative in members:
        target = (staging / relative).resolve()
        if not target.is_relative_to(root):
            raise ArchiveError(f"{info.filename!r} points outside the archive's folder; refused")
        target.parent.mkdir(parents=True, exist_ok=True)
        member_bytes = 0
        with archive.open(info) as src, open(target, "xb") as out:
            while chunk := src.read(_CHUNK):
                member_bytes += len(chunk)
                written += len(chunk)
                # Declared sizes can lie: count what actually comes out, and stop at the first chunk over.
                if member_bytes > min(info.file_size, max_member_bytes) or written > max_total_bytes:
                    raise ArchiveError(f"{info.filename!r} inflates past its declared size or the "
                                       f"{_size(min(max_member_bytes, max_total_bytes))} limit; refused")
                out.write(chunk)


def _check_no_folder_clash(dest: Path, members) -> None:
    """Checked before writing, so the final move into ``dest`` cannot stop halfway."""
    root = dest.resolve()
    for _info, relative in members:
        target = dest / relative
        if target.is_symlink() or target.is_dir():
            raise ArchiveError(f"{relative!r} would replace the existing folder or link {target}")
        if not target.resolve().is_relative_to(root):
            raise ArchiveError(f"{relative!r} would be written outside {dest} through a link there; refused")


def _move_into(staging: Path, dest: Path, members) -> list[Path]:
    """Move the staged files into ``dest`` (replacing same-named files) and list them."""
    extracted = []
    for _info, relative in members:
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / relative, target)
        extracted.append(target)
    return extracted


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


@contextmanager
def scratch_folder(kind: str) -> Iterator[Path]:
    """A new private folder ``<workspace>/uploads/<kind>-<pid>-<random>`` for one upload's files, removed when the
    block ends, exceptions included. Folders that killed processes left behind (kill -9, a power cut: no
    ``finally`` runs) are swept first, so raw uploads never pile up."""
    if kind not in SCRATCH_KINDS:
        raise ValueError(f"unknown scratch kind {kind!r}; expected one of {', '.join(SCRATCH_KINDS)}")
    uploads = settings.home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    sweep_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=uploads))  # mkdtemp: mode 0700
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def sweep_scratch() -> list[Path]:
    """Remove the scratch folders under ``<workspace>/uploads`` whose process is gone; returns those removed.
    A folder of a live process (another import running now, in this process or another) is left alone."""
    import psutil

    uploads = settings.home() / "uploads"
    removed = []
    if not uploads.is_dir():
        return removed
    for entry in uploads.iterdir():
        match = _SCRATCH_NAME.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        if match.group(2) is not None and psutil.pid_exists(int(match.group(2))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def import_source(kind: str, root: str | Path) -> Path:
    """What ``core.data.importers.import_<kind>`` should be given for an extracted archive at ``root``.

    ``folder``, ``csxa`` and ``dicom`` take the folder itself; ``csv`` the manifest (``manifest.csv``
    preferred, else the only CSV); ``yolo`` the folder holding ``data.yaml``; ``coco`` the annotation JSON
    (``annotations.json`` preferred, else the one JSON with ``images`` in it).
    """
    root = Path(root)
    if kind in ("folder", "csxa", "dicom"):
        return root
    if kind == "csv":
        found = _shallowest(root, "*.csv")
        preferred = [p for p in found if p.name.lower() == "manifest.csv"]
        if preferred or len(found) == 1:
            return (preferred or found)[0]
        raise ArchiveError("the archive holds no CSV manifest (path,label,patient_id,...)" if not found else
                           f"the archive holds {len(found)} CSV files and none is named manifest.csv: "
                           + ", ".join(p.relative_to(root).as_posix() for p in found[:5]))
    if kind == "yolo":
        found = _shallowest(root, "data.yaml")
        if not found:
            raise ArchiveError("the archive holds no data.yaml, so it is not a YOLO dataset")
        return found[0].parent
    if kind == "coco":
        found = [p for p in _shallowest(root, "*.json") if p.name == "annotations.json" or _looks_like_coco(p)]
        if not found:
            raise ArchiveError("the archive holds no COCO annotation JSON (a file with 'images' and 'annotations')")
        return sorted(found, key=lambda p: p.name != "annotations.json")[0]
    raise ArchiveError(f"unknown dataset layout {kind!r}; expected folder, csv, yolo, coco, csxa or dicom")


def _shallowest(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern), key=lambda p: (len(p.relative_to(root).parts), p.as_posix()))


def _looks_like_coco(path: Path) -> bool:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("images"), list)
