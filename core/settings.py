"""Workspace paths and environment settings.

Everything a user creates lives under one folder, ``$CERVICURVE_HOME`` (default ``./workspace``),
so a workspace can be copied, backed up or deleted as one thing.
"""
from __future__ import annotations

import os
from pathlib import Path

CLASSES: tuple[str, ...] = ("normal", "straightened", "reversed")


def home() -> Path:
    """The workspace folder, created on first use."""
    path = Path(os.environ.get("CERVICURVE_HOME", "workspace")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    """SQLAlchemy URL of the annotation store; a team can point it at PostgreSQL."""
    return os.environ.get("CERVICURVE_DB") or f"sqlite:///{home() / 'cervicurve.db'}"


def images_dir() -> Path:
    """Imported images, stored by content hash so a re-import never duplicates a file."""
    return _subdir("images")


def runs_dir() -> Path:
    """One folder per training run (classify, detect, landmarks)."""
    return _subdir("runs")


def promoted_dir() -> Path:
    """Symlink-free copies of the runs promoted to Predict, one per task."""
    return _subdir("promoted")


def exports_dir() -> Path:
    return _subdir("exports")


def tool_config_dir() -> Path:
    """Third-party tools' config and caches (ultralytics, matplotlib) stay inside the workspace."""
    return _subdir("config")


def pseudonym_salt() -> bytes:
    """Salt for DICOM patient pseudonyms: stable per workspace, secret to it.

    Kept in a file so re-imports of the same patient map to the same pseudonym.
    """
    salt_file = home() / ".pseudonym_salt"
    if not salt_file.exists():
        salt_file.write_bytes(os.urandom(32).hex().encode())
        salt_file.chmod(0o600)
    return salt_file.read_bytes().strip()


def cpu_threads() -> int:
    """Threads for torch on CPU: all cores unless the user limits it."""
    return int(os.environ.get("CERVICURVE_THREADS", os.cpu_count() or 1))


def _subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
