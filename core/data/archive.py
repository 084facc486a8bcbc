"""Safe extraction of uploaded zip archives (a dataset as a folder tree, CSV + images, YOLO, COCO, CSXA).

An upload is untrusted: a member may try to write outside the target folder (``../``, an absolute
path, a drive letter), be a symlink pointing anywhere, or be a "zip bomb" that declares small sizes
and inflates to fill the disk. Every member is checked before anything is written, bytes are counted
again while inflating, and extraction goes to a staging folder that is removed on any refusal, so a
refused archive leaves nothing behind.
"""
from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MAX_MEMBERS = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3
_CHUNK = 1 << 20
# Finder and Explorer litter: never data, and their "._x.png" twins would fail as images.
_JUNK_DIRS = {"__MACOSX"}
_JUNK_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}


class ArchiveError(ValueError):
    """The archive is unreadable, unsafe, or does not hold the layout asked for; the message says why."""


def extract_zip(source: str | Path | bytes | BinaryIO, dest: str | Path, max_members: int = MAX_MEMBERS,
                max_total_bytes: int = MAX_TOTAL_BYTES) -> list[Path]:
    """Extract a zip into ``dest`` (created when missing) and return the extracted files, in archive order.

    Raises ArchiveError, writing nothing, when the archive is not a zip, is encrypted, has more than
    ``max_members`` members, inflates to more than ``max_total_bytes``, or holds a member whose path
    escapes ``dest`` or that is a symlink or other special file.
    """
    dest = Path(dest)
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a readable zip archive ({exc})") from None
    with archive:
        members = _checked_members(archive, max_members, max_total_bytes)
        _check_no_folder_clash(dest, members)
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=dest))
        try:
            _inflate(archive, members, staging, max_total_bytes)
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


def _checked_members(archive: zipfile.ZipFile, max_members: int, max_total_bytes: int) -> list[tuple[zipfile.ZipInfo, str]]:
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


def _inflate(archive: zipfile.ZipFile, members, staging: Path, max_total_bytes: int) -> None:
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
                # Declared sizes can lie: count what actually comes out.
                if member_bytes > info.file_size or written > max_total_bytes:
                    raise ArchiveError(f"{info.filename!r} inflates past its declared size or the "
                                       f"{_size(max_total_bytes)} limit; refused")
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
