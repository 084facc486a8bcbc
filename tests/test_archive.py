"""Safe zip extraction: what an uploaded dataset archive may and may not do to the workspace."""
from __future__ import annotations

import io
import stat
import zipfile

import pytest

from core.data.archive import ArchiveError, extract_zip


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_extracts_a_class_per_folder_tree_and_drops_os_junk(tmp_path):
    data = make_zip({"set/normal/a.png": b"A", "set/reversed/b.png": b"BB", "__MACOSX/set/._a.png": b"x",
                     "set/.DS_Store": b"x", "set/empty/": b""})
    files = extract_zip(data, tmp_path / "out")
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files] == ["set/normal/a.png", "set/reversed/b.png"]
    assert (tmp_path / "out/set/reversed/b.png").read_bytes() == b"BB"
    assert listing(tmp_path / "out") == ["set", "set/normal", "set/normal/a.png", "set/reversed", "set/reversed/b.png"]


def test_reads_a_zip_from_a_path(tmp_path):
    path = tmp_path / "upload.zip"
    path.write_bytes(make_zip({"x.png": b"1"}))
    assert [p.name for p in extract_zip(path, tmp_path / "out")] == ["x.png"]


@pytest.mark.parametrize("name", ["../evil.png", "set/../../evil.png", "/etc/evil.png", "..\\evil.png", "C:/evil.png"])
def test_refuses_members_escaping_the_folder_and_writes_nothing(tmp_path, name):
    data = make_zip({"set/normal/a.png": b"A", name: b"evil"})
    with pytest.raises(ArchiveError, match="outside|absolute"):
        extract_zip(data, tmp_path / "out")
    assert listing(tmp_path) == []


def test_refuses_symlinks(tmp_path):
    data = make_zip({"set/a.png": b"A"}, symlinks={"set/link.png": "/etc/passwd"})
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_zip(data, tmp_path / "out")
    assert listing(tmp_path) == []


def test_refuses_too_many_members(tmp_path):
    data = make_zip({f"f{i}.png": b"x" for i in range(6)})
    with pytest.raises(ArchiveError, match="6 members"):
        extract_zip(data, tmp_path / "out", max_members=5)
    assert not (tmp_path / "out").exists()


def test_refuses_a_declared_total_over_the_limit(tmp_path):
    data = make_zip({"big.png": b"\0" * 10_000})
    with pytest.raises(ArchiveError, match="inflate"):
        extract_zip(data, tmp_path / "out", max_total_bytes=5_000)
    assert not (tmp_path / "out").exists()


def test_counts_inflated_bytes_when_declared_sizes_lie(tmp_path):
    """A bomb that declares 10 bytes per member but inflates to 1 MB is refused and nothing is written.

    (zipfile stops reading at the declared size and the CRC check fails; the byte count is a second guard.)"""
    data = bytearray(make_zip({"a.bin": b"\0" * 1_000_000, "b.bin": b"\0" * 1_000_000}))
    # Patch both the local headers and the central directory to claim 10 bytes uncompressed.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            data[start + offset:start + offset + 4] = (10).to_bytes(4, "little")
            start += 4
    with pytest.raises(ArchiveError, match="damaged|inflates past"):
        extract_zip(bytes(data), tmp_path / "out", max_total_bytes=100)
    assert not (tmp_path / "out").exists()


def test_refuses_garbage_and_leaves_an_existing_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("kept")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_zip(b"this is not a zip", out)
    with pytest.raises(ArchiveError):
        extract_zip(make_zip({"ok.png": b"1", "../x": b"2"}), out)
    assert listing(out) == ["kept.txt"]


def test_refuses_duplicate_members(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, pytest.warns(UserWarning):
        archive.writestr("a.png", b"1")
        archive.writestr("a.png", b"2")
    with pytest.raises(ArchiveError, match="twice"):
        extract_zip(buffer.getvalue(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_archive_error_is_a_value_error():
    assert issubclass(ArchiveError, ValueError)
