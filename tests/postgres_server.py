"""A throwaway PostgreSQL server for the tests: initdb in a temporary folder, pg_ctl start on a free loopback port,
stopped and deleted afterwards. Run as the ``postgres`` user when the tests run as root (initdb refuses root)."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for folder in candidates + ([str(Path(found).parent)] if found else []):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """Yields a SQLAlchemy URL (psycopg 3) of a fresh server; nothing is left running or on disk afterwards."""
    folder = binaries()
    if folder is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="cervicurve-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        root.chmod(0o700)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([*as_user, str(folder / "initdb"), "-D", str(data), "-U", "cervicurve", "-A", "trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, env=env, timeout=120)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    subprocess.run([*as_user, str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                    "-w", "start"], check=True, capture_output=True, env=env, timeout=120)
    try:
        yield f"postgresql+psycopg://cervicurve@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, env=env, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def reset(url: str) -> None:
    """Drop every table, so each test starts from an empty database on the shared server."""
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        metadata = MetaData()
        metadata.reflect(engine)
        metadata.drop_all(engine)
    finally:
        engine.dispose()
