"""Workspace paths and environment settings.

Everything a user creates lives under one folder, ``$CERVICURVE_HOME`` (default ``./workspace``),
so a workspace can be copied, backed up or deleted as one thing.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CLASSES: tuple[str, ...] = ("normal", "straightened", "reversed")


class SettingsError(ValueError):
    """A bad environment value; the message names the variable and the form it expects."""


# name -> (what it is, the form expected). Read by check() and the accessors below.
VARIABLES = {
    "CERVICURVE_HOME": "the workspace folder: a path to a folder (created when missing)",
    "CERVICURVE_DB": "a SQLAlchemy database URL such as sqlite:////path/cervicurve.db or "
                     "postgresql+psycopg://user@host:5432/name",
    "CERVICURVE_THREADS": "torch CPU threads: a whole number from 1 up",
    "CERVICURVE_NORMAL_MIN_DEG": "Cobb C2-C7 angle (degrees) from which a curve is normal: a number such as 10",
    "CERVICURVE_REVERSED_MAX_DEG": "Cobb C2-C7 angle (degrees) up to which a curve is reversed: a number such as -4, "
                                   "below CERVICURVE_NORMAL_MIN_DEG",
    "CERVICURVE_PRELOAD": "load the Predict models when the app starts: 1 (default) or 0",
    "CERVICURVE_PRELOAD_WAIT_S": "seconds `python -m ui.serve` waits for the promoted models before the server "
                                 "answers (they go on loading beside it after that): a number from 0 up, default 60",
    # Input budgets: a small hostile file must not take the memory (see README "Security").
    "CERVICURVE_MAX_IMAGE_MPX": "the largest image read, in megapixels (width x height, read from the header before "
                                "decoding): a number above 0, default 50",
    "CERVICURVE_MAX_FILE_MB": "the largest single input read, in MiB: an image file, a zip member, a DICOM's pixel "
                              "data as declared or inflated: a number above 0, default 256",
    "CERVICURVE_MAX_ZIP_MB": "the most an uploaded zip may inflate to, all members together, in MiB: a number above "
                             "0, default 2048",
    "CERVICURVE_CROP_CACHE_MB": "disk kept for decoded training crops (workspace cache/crops), in MiB: a number "
                                "above 0, default 4096",
    "CERVICURVE_SESSION_IDLE_MIN": "minutes a sign-in stays valid without use (team mode): a number above 0, "
                                   "default 60",
    "CERVICURVE_SESSION_MAX_HOURS": "hours a sign-in lasts at most, however busy (team mode): a number above 0, "
                                    "default 12",
    "CERVICURVE_SIGNIN_FAILURES": "failed sign-ins to one account name before it is locked (team mode): a whole "
                                  "number from 1 up, default 5",
    "CERVICURVE_SIGNIN_LOCKOUT_S": "seconds the first lockout lasts, doubled by each further failure up to an hour "
                                   "(team mode): a number above 0, default 30",
    "CERVICURVE_SIGNIN_CONCURRENT": "sign-ins checked at once per server process, each holding 64 MiB of argon2 "
                                    "memory (team mode): a whole number from 1 up, default 4",
}


def check() -> None:
    """Every CerviCurve environment variable that is set, checked at start (CLI and app): SettingsError
    with one line per bad value, naming the variable, what it got and the form expected."""
    problems = []
    for name, reader in (("CERVICURVE_HOME", _checked_home), ("CERVICURVE_DB", _checked_db_url),
                         ("CERVICURVE_THREADS", cpu_threads), ("CERVICURVE_PRELOAD", _checked_preload)):
        try:
            reader()
        except SettingsError as error:
            problems.append(str(error))
    for name, reader in (("CERVICURVE_MAX_IMAGE_MPX", max_image_pixels), ("CERVICURVE_MAX_FILE_MB", max_file_bytes),
                         ("CERVICURVE_MAX_ZIP_MB", max_zip_bytes), ("CERVICURVE_PRELOAD_WAIT_S", preload_wait_s)):
        try:
            reader()
        except SettingsError as error:
            problems.append(str(error))
    try:
        normal, reversed_ = rule_thresholds_deg()
        if os.environ.get("CERVICURVE_NORMAL_MIN_DEG") or os.environ.get("CERVICURVE_REVERSED_MAX_DEG"):
            if not reversed_ < normal:
                problems.append(f"CERVICURVE_REVERSED_MAX_DEG ({reversed_:g}) must be below "
                                f"CERVICURVE_NORMAL_MIN_DEG ({normal:g})")
    except SettingsError as error:
        problems.append(str(error))
    for name, reader in (("CERVICURVE_SESSION_IDLE_MIN", session_idle_minutes),
                         ("CERVICURVE_SESSION_MAX_HOURS", session_max_hours),
                         ("CERVICURVE_SIGNIN_LOCKOUT_S", sign_in_lockout_s)):
        try:
            if reader() <= 0:
                problems.append(str(_bad(name, os.environ[name])))
        except SettingsError as error:
            problems.append(str(error))
    for reader in (sign_in_failures, sign_in_concurrent):
        try:
            reader()
        except SettingsError as error:
            problems.append(str(error))
    if problems:
        raise SettingsError("bad settings:\n  " + "\n  ".join(problems))


def _bad(name: str, value: str) -> SettingsError:
    return SettingsError(f"{name}={value!r} is not valid; expected {VARIABLES[name]}")


def env_number(name: str, default: float) -> float:
    """A finite number from the environment (``default`` when unset or empty)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return float(default)
    try:
        number = float(value)
    except ValueError:
        raise _bad(name, value) from None
    if not math.isfinite(number):
        raise _bad(name, value)
    return number


def session_idle_minutes() -> float:
    """How long a team-mode sign-in lasts without use."""
    return env_number("CERVICURVE_SESSION_IDLE_MIN", 60.0)


def session_max_hours() -> float:
    """How long a team-mode sign-in lasts at most, in use or not (a stolen token stops working by then)."""
    return env_number("CERVICURVE_SESSION_MAX_HOURS", 12.0)


def sign_in_lockout_s() -> float:
    """Seconds of the first lockout after CERVICURVE_SIGNIN_FAILURES failed sign-ins."""
    return env_number("CERVICURVE_SIGNIN_LOCKOUT_S", 30.0)


def sign_in_failures() -> int:
    """Failed sign-ins to one account name before it is locked."""
    return _whole("CERVICURVE_SIGNIN_FAILURES", 5)


def sign_in_concurrent() -> int:
    """Sign-ins whose password hash is checked at once in one process (argon2 takes 64 MiB for each)."""
    return _whole("CERVICURVE_SIGNIN_CONCURRENT", 4)


def _whole(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise _bad(name, value)
    return int(value)


def rule_thresholds_deg() -> tuple[float, float]:
    """(normal from, reversed up to) Cobb C2-C7 degrees: the defaults of ``core.data.measure.RuleThresholds``
    unless the environment sets them."""
    return env_number("CERVICURVE_NORMAL_MIN_DEG", 10.0), env_number("CERVICURVE_REVERSED_MAX_DEG", -4.0)


def home() -> Path:
    """The workspace folder, created on first use (0700). From then on this process creates files 0600 and folders
    0700: the workspace holds patients' images and password hashes, which no other local user may read."""
    _private_umask()
    path = Path(os.environ.get("CERVICURVE_HOME") or "workspace").expanduser().resolve()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _private_umask() -> None:
    # Straight to 0o077, never through 0: a thread that writes a file meanwhile never gets a looser mode.
    old = os.umask(0o077)
    if old & ~0o077:
        os.umask(old | 0o077)


def _checked_home() -> Path:
    value = os.environ.get("CERVICURVE_HOME") or "workspace"
    try:
        path = home()
    except (OSError, RuntimeError, ValueError) as error:  # a file in the way, no permission, a NUL
        raise SettingsError(f"CERVICURVE_HOME={value!r} cannot be used as the workspace ({error}); "
                            f"expected {VARIABLES['CERVICURVE_HOME']}") from None
    if not os.access(path, os.W_OK):
        raise SettingsError(f"CERVICURVE_HOME={value!r}: the folder is not writable; expected a folder you can write to")
    return path


def _checked_db_url() -> str:  # the URL as set, "" when unset
    value = os.environ.get("CERVICURVE_DB")
    if not value:
        return ""  # the workspace's SQLite file: CERVICURVE_HOME's check covers it
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        raise _bad("CERVICURVE_DB", value) from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise SettingsError(f"CERVICURVE_DB={url.render_as_string(hide_password=True)!r}: the {url.get_backend_name()!r} "
                            "database is not supported; expected sqlite or postgresql")
    return value


def _checked_preload() -> bool:
    value = os.environ.get("CERVICURVE_PRELOAD", "1").strip() or "1"
    if value not in ("0", "1"):
        raise _bad("CERVICURVE_PRELOAD", value)
    return value == "1"


def preload_wait_s() -> float:
    """How long ``python -m ui.serve`` holds the server back while the promoted models load (0: not at all)."""
    value = env_number("CERVICURVE_PRELOAD_WAIT_S", 60.0)
    if value < 0:
        raise _bad("CERVICURVE_PRELOAD_WAIT_S", os.environ["CERVICURVE_PRELOAD_WAIT_S"])
    return value


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


def max_image_pixels() -> int:
    """Largest width x height read (default 50 Mpx; a real film is 3-12 Mpx): checked from the header, before
    anything is decoded, so a 300 KB PNG that declares 10000 x 10000 is refused, not inflated."""
    return int(_budget("CERVICURVE_MAX_IMAGE_MPX", 50.0) * 1_000_000)


def max_file_bytes() -> int:
    """Largest single input (default 256 MiB): an image file, one zip member, a DICOM's pixel data as its header
    declares it and as a deflated file inflates."""
    return int(_budget("CERVICURVE_MAX_FILE_MB", 256.0) * 1024**2)


def max_zip_bytes() -> int:
    """Most an uploaded zip may inflate to in all (default 2 GiB)."""
    return int(_budget("CERVICURVE_MAX_ZIP_MB", 2048.0) * 1024**2)


def crop_cache_bytes() -> int:
    """Most disk the decoded-crop cache may hold (default 4 GiB: about 80,000 crops at 224 px); past it crops are
    still made, in memory only."""
    return int(_budget("CERVICURVE_CROP_CACHE_MB", 4096.0) * 1024**2)


def crop_cache_dir() -> Path:
    return _subdir("cache") / "crops"


def _budget(name: str, default: float) -> float:
    number = env_number(name, default)
    if number <= 0:
        raise _bad(name, os.environ[name])
    return number


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
    """Threads for torch on CPU: all cores unless the user limits it (SettingsError for a bad value)."""
    value = os.environ.get("CERVICURVE_THREADS", "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) < 1:
        raise _bad("CERVICURVE_THREADS", value)
    return int(value)


def _subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
