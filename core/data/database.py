"""The annotation database as a whole: bring it to the current schema, copy it to a server, back it up.

``python -m core db upgrade`` opens every part of the database (store, accounts, quizzes), which creates what is
missing and moves the store's schema version forward in place, on SQLite and PostgreSQL alike.
``python -m core db copy --to URL`` moves a team's SQLite store to PostgreSQL with every row of every table (the
append-only history included) and checks the counts; the destination must be empty.
``python -m core db backup`` writes a consistent copy of a SQLite store (SQLite's online backup, safe while the
app runs) into ``$CERVICURVE_HOME/backups/``; a PostgreSQL store is backed up with ``pg_dump``.
"""
from __future__ import annotations

import importlib
import sqlite3
from datetime import datetime
from pathlib import Path

from sqlalchemy import MetaData, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core import settings

# Every module that keeps tables in the annotation database, each with its own ``metadata``.
PARTS = ("core.data.store", "core.data.accounts", "core.data.quizzes")


class DatabaseError(ValueError):
    """A database that cannot be upgraded, copied or backed up; the message says why."""


def _metadatas() -> list[MetaData]:
    return [importlib.import_module(name).metadata for name in PARTS]


def upgrade(url: str | None = None) -> dict[str, int]:
    """Create missing tables and upgrade the store's schema in place; returns table -> row count."""
    from core.data.accounts import Accounts
    from core.data.quizzes import QuizStore
    from core.data.store import AnnotationStore

    url = url or settings.db_url()
    for part in (AnnotationStore, Accounts, QuizStore):
        part(url).close()
    return row_counts(url)


def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar())
                    for metadata in _metadatas() for table in metadata.sorted_tables}
    finally:
        engine.dispose()


def copy(destination: str, source: str | None = None) -> dict[str, int]:
    """Every row of every table from ``source`` (default: this workspace's store) into an empty ``destination``."""
    source = source or settings.db_url()
    if make_url(source) == make_url(destination):
        raise DatabaseError("source and destination are the same database")
    upgrade(source)
    upgrade(destination)  # the destination's schema comes from our own table definitions, not a reflection
    before = row_counts(destination)
    if any(count for name, count in before.items() if name != "schema_info"):
        raise DatabaseError(f"{make_url(destination).render_as_string(hide_password=True)} already holds rows "
                            f"({', '.join(f'{k} {v}' for k, v in before.items() if v and k != 'schema_info')}): "
                            "copy into an empty database")
    src, dst = create_engine(source), create_engine(destination)
    try:
        with src.connect() as read, dst.begin() as write:
            for metadata in _metadatas():
                for table in metadata.sorted_tables:  # parents before children (foreign keys)
                    if table.name == "schema_info":
                        continue
                    rows = [dict(r) for r in read.execute(select(table)).mappings()]
                    for start in range(0, len(rows), 1000):
                        write.execute(insert(table), rows[start:start + 1000])
                    _continue_ids(write, table)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"the copy failed and was rolled back: {getattr(exc, 'orig', None) or exc}") from None
    finally:
        src.dispose()
        dst.dispose()
    copied, expected = row_counts(destination), row_counts(source)
    if {k: v for k, v in copied.items() if k != "schema_info"} != \
            {k: v for k, v in expected.items() if k != "schema_info"}:
        raise DatabaseError(f"row counts differ after the copy: source {expected}, destination {copied}")
    return copied


def _continue_ids(conn, table) -> None:
    """PostgreSQL: rows copied with their ids leave the id sequence behind; move it past the largest id."""
    if conn.dialect.name != "postgresql":
        return
    for column in table.primary_key.columns:
        if column.autoincrement is True or (column.autoincrement == "auto" and column.type.python_type is int):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                              f"COALESCE((SELECT MAX({column.name}) FROM {table.name}), 0) + 1, false)"))


def backup(url: str | None = None) -> Path:
    """A consistent copy of a SQLite store in the workspace's backups/ folder."""
    url = make_url(url or settings.db_url())
    if url.get_backend_name() != "sqlite" or not url.database:
        raise DatabaseError("db backup copies a SQLite store; back up PostgreSQL with pg_dump, e.g. "
                            "pg_dump -Fc -f cervicurve.dump DBNAME")
    out = settings.home() / "backups" / f"cervicurve-{datetime.now():%Y%m%d-%H%M%S}.db"
    out.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(url.database) as live, sqlite3.connect(out) as copy_:
        live.backup(copy_)  # page by page under SQLite's own locking: safe while the app writes
    return out

