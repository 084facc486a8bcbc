"""A throwaway PostgreSQL server for the tests: initdb in a temporary folder, pg_ctl start on a free loopback port,
stopped and deleted afterwards (by a watchdog process, also when the tests are killed); one database per test.
Run as the ``postgres`` user when the tests run as root (initdb refuses root)."""
from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
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


# Stops the server and deletes its folder once the test process is gone, however it went (a timeout's SIGTERM,
# SIGKILL, a crash, or the normal end): the test process holds the only write end of this one's stdin.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.buffer.read()
subprocess.run(sys.argv[2:], capture_output=True, timeout=120)
shutil.rmtree(sys.argv[1], ignore_errors=True)
"""


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
    stop = [*as_user, str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(root), *stop], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # not in the group a Ctrl-C or a timeout signals
    try:
        subprocess.run([*as_user, str(folder / "initdb"), "-D", str(data), "-U", "cervicurve", "-A", "trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, env=env, timeout=120)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        subprocess.run([*as_user, str(folder / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                        "-w", "start"], check=True, capture_output=True, env=env, timeout=120)
        yield f"postgresql+psycopg://cervicurve@127.0.0.1:{port}/postgres"
    finally:
        watchdog.stdin.close()  # the watchdog stops the server and deletes the folder now
        watchdog.wait(timeout=150)


_numbers = itertools.count(1)


def _admin(url: str):
    """An autocommit psycopg connection to the server's ``postgres`` database (CREATE/DROP DATABASE need one)."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(url).set(drivername="postgresql", database="postgres")
    return psycopg.connect(server.render_as_string(hide_password=False), autocommit=True)


def create_database(url: str) -> str:
    """A new, empty database on the server of ``url`` (a copy of template1, ~0.1 s with the drop); returns its URL."""
    from sqlalchemy.engine import make_url

    name = f"test_{os.getpid()}_{next(_numbers)}"
    with _admin(url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, closing what still holds a connection to it (an engine a test left open)."""
    from sqlalchemy.engine import make_url

    with _admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


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
