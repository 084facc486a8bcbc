"""Team accounts: users with roles, sign-in sessions, the permission check every admin action goes through, audit.

Two modes. **Single-user** (the default, no account exists): one person on loopback, no sign-in, every action
allowed. **Team** (once an account exists, ``python -m core users add``): the app asks for a sign-in, and each
page action passes its session token to core, which looks the token up here and checks the user's role — so a
forged ``st.session_state`` (a role or a name typed in) still cannot start, promote or delete a run or import data.
The shell is trusted (whoever can run ``python -m core`` owns the workspace files anyway): the CLI acts as
:data:`SHELL`.

Passwords are argon2id hashes (argon2-cffi); a wrong password is answered after the same hash work whether or not
the user exists, and after a fixed delay. After ``CERVICURVE_SIGNIN_FAILURES`` failures in a row (default 5) an
account name is locked for ``CERVICURVE_SIGNIN_LOCKOUT_S`` seconds (default 30), doubled by each further failure up
to an hour; the count lives in the database, so it holds across server processes and restarts, and it is kept for
unknown names too (a lockout says nothing about whether an account exists). At most ``CERVICURVE_SIGNIN_CONCURRENT``
sign-ins are hashed at once per process (default 4; argon2 holds 64 MiB for each): one more is refused, not queued.
Session tokens are random, stored only as SHA-256, and expire after ``CERVICURVE_SESSION_IDLE_MIN`` minutes without
use (default 60) and ``CERVICURVE_SESSION_MAX_HOURS`` hours after sign-in whatever the use (default 12).
Every admin action and every refused one is written to ``audit``, a table that the database itself keeps
append-only (a trigger refuses UPDATE and DELETE on SQLite and PostgreSQL). The tables live in the annotation
database (SQLite or PostgreSQL), beside the store's.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (Boolean, Column, DateTime, Integer, MetaData, String, Table, Text, func, insert, select,
                        update)
from sqlalchemy.engine import Connection

from core import settings
from core.data.store import Database

ROLES = ("annotator", "reviewer", "admin")
# What each role may do; a role includes everything of the roles before it.
PERMISSIONS = {
    "label": "annotator",
    "review": "reviewer",
    "import": "admin", "delete_data": "admin",
    "start_run": "admin", "cancel_run": "admin", "resume_run": "admin", "delete_run": "admin",
    "promote": "admin", "manage_users": "admin",
    # writes of the Teach page: a quiz is set by a reviewer (a senior reader), answered by anyone signed in
    "create_quiz": "reviewer", "answer_quiz": "annotator",
    # files written on the server: dataset exports, the ONNX copy of a promoted model, a run's analysis
    "export": "admin", "export_model": "admin", "analyse": "admin",
}
WRONG_PASSWORD_DELAY_S = 0.5
LOCKOUT_MAX_S = 3600.0  # the doubling stops here: an attacker still gets only ~24 guesses a day per account
# How long a sign-in waits for a free hashing slot before it is refused (short: a burst of honest sign-ins waits,
# a flood does not pile up memory or threads)
SIGN_IN_WAIT_S = 2.0
NO_SESSION = "(no session)"  # the audit's user name for an action tried without a live session
_DUMMY_HASH: str | None = None
_HASHING: threading.BoundedSemaphore | None = None
_HASHING_LOCK = threading.Lock()

metadata = MetaData()
users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
sessions = Table(
    "sessions", metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("ended", Boolean, nullable=False, default=False),
)
audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user_name", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", Text, nullable=False, default=""),
    Column("allowed", Boolean, nullable=False),
)
# Failed sign-ins in a row per account name (known or not), and until when it is locked.
sign_in_failures = Table(
    "sign_in_failures", metadata,
    Column("user_name", String(64), primary_key=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("last_failure", DateTime(timezone=True), nullable=True),
)

# The database refuses to change or remove audit rows, whoever connects (not only this code).
_AUDIT_MESSAGE = "the audit table is append-only"
_SQLITE_AUDIT_TRIGGERS = tuple(
    f"CREATE TRIGGER IF NOT EXISTS audit_append_only_{verb.lower()} BEFORE {verb} ON audit "
    f"BEGIN SELECT RAISE(ABORT, '{_AUDIT_MESSAGE}'); END" for verb in ("UPDATE", "DELETE"))
_POSTGRES_AUDIT_TRIGGERS = (
    "CREATE OR REPLACE FUNCTION cervicurve_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_AUDIT_MESSAGE}'; END $$",
    "DROP TRIGGER IF EXISTS audit_append_only ON audit",
    "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION cervicurve_audit_append_only()",
    "DROP TRIGGER IF EXISTS audit_no_truncate ON audit",
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION cervicurve_audit_append_only()",
)


class AccountError(ValueError):
    """A user that cannot be added or changed (bad name, unknown role, duplicate)."""


class PermissionDenied(PermissionError):
    """The signed-in user's role does not allow the action (or the session is missing or expired)."""


class SignInRefused(PermissionDenied):
    """A sign-in not even checked: the account name is locked after failures, or too many sign-ins are hashed at
    once. The message says which, and when to try again."""


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, action: str) -> bool:
        needed = PERMISSIONS.get(action, "admin")
        return ROLES.index(self.role) >= ROLES.index(needed)


# Who acts when nobody signs in: the shell (CLI), and the one person of single-user mode.
SHELL = User("shell", "admin")
OWNER = User("owner", "admin")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def idle_limit() -> timedelta:
    return timedelta(minutes=settings.session_idle_minutes())


def lifetime_limit() -> timedelta:
    return timedelta(hours=settings.session_max_hours())


def lockout_for(failures: int) -> timedelta:
    """How long an account is locked after ``failures`` failed sign-ins in a row (zero below the threshold)."""
    over = failures - settings.sign_in_failures()
    if over < 0:
        return timedelta(0)
    return timedelta(seconds=min(LOCKOUT_MAX_S, settings.sign_in_lockout_s() * 2.0 ** min(over, 32)))


class Accounts(Database):
    """Users, sessions and the audit log of one annotation database."""

    def __init__(self, url: str | None = None):
        super().__init__(url)
        with self._write() as conn:
            metadata.create_all(conn)
            # every opening re-creates the triggers when missing, so an older database is upgraded in place
            _ensure_audit_triggers(conn)

    # ------------------------------------------------------------------ mode and users
    def team_mode(self) -> bool:
        """Sign-in is on as soon as one account exists."""
        with self._read() as conn:
            return bool(conn.execute(select(func.count()).select_from(users)).scalar())

    def add_user(self, name: str, password: str, role: str) -> User:
        name = (name or "").strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
            raise AccountError(f"user name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of: {', '.join(ROLES)}")
        if len(password or "") < 8:
            raise AccountError("the password needs at least 8 characters")
        with self._write() as conn:
            if conn.execute(select(users.c.id).where(users.c.name == name)).first():
                raise AccountError(f"user {name!r} exists already (users set-role / disable change it)")
            conn.execute(insert(users).values(name=name, password_hash=_hasher().hash(password), role=role,
                                              disabled=False, created_at=_now()))
        return User(name, role)

    def list_users(self) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(select(users.c.name, users.c.role, users.c.disabled, users.c.created_at)
                                .order_by(users.c.name)).mappings().all()
        return [dict(r) for r in rows]

    def set_role(self, name: str, role: str) -> None:
        if role not in ROLES:
            raise AccountError(f"role {role!r} is not one of: {', '.join(ROLES)}")
        self._change(name, role=role)

    def disable(self, name: str) -> None:
        self._change(name, disabled=True)
        with self._write() as conn:  # a disabled user's open sessions end now
            conn.execute(update(sessions).where(sessions.c.user_name == name).values(ended=True))

    def _change(self, name: str, **values) -> None:
        with self._write() as conn:
            if conn.execute(update(users).where(users.c.name == name).values(**values)).rowcount == 0:
                raise AccountError(f"no user {name!r} (users list shows them)")

    # ------------------------------------------------------------------ sessions
    def sign_in(self, name: str, password: str) -> str | None:
        """A session token, or None. Wrong name and wrong password cost the same hash work and the same delay.

        SignInRefused, before any hash work, while the name is locked out or when every hashing slot is taken."""
        from argon2.exceptions import InvalidHashError, VerificationError

        name = (name or "").strip()
        key = name[:64]  # the failure count's key; no account name is longer
        if not _hashing_slots().acquire(timeout=SIGN_IN_WAIT_S):
            raise SignInRefused("too many sign-ins at once on this server: try again in a moment")
        try:
            # counted before the hash is checked: parallel tries cannot slip past the limit while others are hashed
            locked, failures = self._count_failure(key)
            with self._read() as conn:
                row = conn.execute(select(users).where(users.c.name == name)).mappings().first()
            stored = row["password_hash"] if row else _dummy_hash()
            try:
                _hasher().verify(stored, password or "")
                good = row is not None and not row["disabled"]
            except (VerificationError, InvalidHashError):
                good = False
        finally:
            _hashing_slots().release()
        if not good:
            if locked:
                self.record(key, "sign_in", f"locked for {locked.total_seconds():g} s after {failures} failures",
                            allowed=False)
            time.sleep(WRONG_PASSWORD_DELAY_S)
            return None
        token = secrets.token_urlsafe(32)
        with self._write() as conn:
            conn.execute(update(sign_in_failures).where(sign_in_failures.c.user_name == key)
                         .values(failures=0, locked_until=None))
            conn.execute(insert(sessions).values(token_sha256=_digest(token), user_name=row["name"], created_at=_now(),
                                                 last_seen=_now(), ended=False))
        return token

    def _count_failure(self, key: str) -> tuple[timedelta, int]:
        """Refuse a locked name (SignInRefused); otherwise count this try as a failure (a success resets it) and lock
        the name once the count reaches the limit; returns (the lock, the count). One write transaction: processes
        count on the same row."""
        now = _now()
        with self._write() as conn:
            row = conn.execute(select(sign_in_failures).where(sign_in_failures.c.user_name == key)).mappings().first()
            if row is not None and row["locked_until"] is not None and _aware(row["locked_until"]) > now:
                wait = (_aware(row["locked_until"]) - now).total_seconds()
                raise SignInRefused(f"too many failed sign-ins for {key!r}: try again in {max(1, round(wait))} s "
                                    "(or ask an admin: python -m core users unlock NAME)")
            failures = (row["failures"] if row is not None else 0) + 1
            locked = lockout_for(failures)
            values = {"failures": failures, "last_failure": now, "locked_until": now + locked if locked else None}
            if row is None:
                conn.execute(insert(sign_in_failures).values(user_name=key, **values))
            else:
                conn.execute(update(sign_in_failures).where(sign_in_failures.c.user_name == key).values(**values))
        return locked, failures

    def unlock(self, name: str) -> None:
        """Clear an account name's failure count (an admin's answer to a user locked out)."""
        with self._write() as conn:
            conn.execute(update(sign_in_failures).where(sign_in_failures.c.user_name == name)
                         .values(failures=0, locked_until=None))

    def lockout(self, name: str) -> dict | None:
        """``{"failures", "locked_until"}`` of an account name, None when it has no failure on record."""
        with self._read() as conn:
            row = conn.execute(select(sign_in_failures.c.failures, sign_in_failures.c.locked_until)
                               .where(sign_in_failures.c.user_name == name)).mappings().first()
        if row is None:
            return None
        return {"failures": row["failures"],
                "locked_until": None if row["locked_until"] is None else _aware(row["locked_until"])}

    def sign_out(self, token: str | None) -> None:
        if token:
            with self._write() as conn:
                conn.execute(update(sessions).where(sessions.c.token_sha256 == _digest(token)).values(ended=True))

    def user_for(self, token: str | None) -> User | None:
        """The signed-in user of a live session (its idle clock restarts), or None."""
        if not token or not isinstance(token, str):
            return None
        with self._write() as conn:
            row = conn.execute(
                select(sessions.c.created_at, sessions.c.last_seen, sessions.c.ended, users.c.name, users.c.role,
                       users.c.disabled)
                .join(users, users.c.name == sessions.c.user_name)
                .where(sessions.c.token_sha256 == _digest(token))).mappings().first()
            if row is None or row["ended"] or row["disabled"] or _now() - _aware(row["last_seen"]) > idle_limit():
                return None
            if _now() - _aware(row["created_at"]) > lifetime_limit():  # however busy: a leaked token dies too
                conn.execute(update(sessions).where(sessions.c.token_sha256 == _digest(token)).values(ended=True))
                return None
            conn.execute(update(sessions).where(sessions.c.token_sha256 == _digest(token)).values(last_seen=_now()))
        return User(row["name"], row["role"])

    # ------------------------------------------------------------------ the check every page action goes through
    def authorize(self, actor: "str | User | None", action: str, target: str = "") -> User:
        """The user doing ``action``: :data:`SHELL` (the CLI), the owner in single-user mode, or the user of a live
        session token whose role allows it. Anything else raises PermissionDenied. Admin actions are audited."""
        if actor is SHELL:
            user = SHELL
        elif not self.team_mode():
            user = OWNER
        else:
            user = self.user_for(actor if isinstance(actor, str) else None)
            if user is None:
                self.record(NO_SESSION, action, target, allowed=False)
                raise PermissionDenied(f"{action}: sign in first (no live session)")
        allowed = user.may(action)
        if PERMISSIONS.get(action, "admin") == "admin" or not allowed:
            self.record(user.name, action, target, allowed=allowed)
        if not allowed:
            raise PermissionDenied(f"{action}: user {user.name!r} is {user.role}; it needs "
                                   f"{PERMISSIONS.get(action, 'admin')}")
        return user

    def record(self, user_name: str, action: str, target: str = "", *, allowed: bool) -> None:
        """Append one audit row (a refusal decided outside :meth:`authorize`, e.g. reviewing one's own reading)."""
        with self._write() as conn:
            _audit(conn, user_name, action, target, allowed)

    def audit_log(self, limit: int = 100) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]


def authorize(actor: "str | User | None", action: str, target: str = "", url: str | None = None) -> User:
    """:meth:`Accounts.authorize` on the workspace's database (or ``url``'s)."""
    with Accounts(url) as accounts:
        return accounts.authorize(actor, action, target)


def _ensure_audit_triggers(conn: Connection) -> None:
    if conn.dialect.name == "sqlite":
        for statement in _SQLITE_AUDIT_TRIGGERS:
            conn.exec_driver_sql(statement)
    elif conn.dialect.name == "postgresql":
        present = {row[0] for row in conn.exec_driver_sql(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit'::regclass")}
        if not {"audit_append_only", "audit_no_truncate"} <= present:  # DDL only when missing: it locks the table
            for statement in _POSTGRES_AUDIT_TRIGGERS:
                conn.exec_driver_sql(statement)


def _audit(conn: Connection, user_name: str, action: str, target: str, allowed: bool) -> None:
    conn.execute(insert(audit).values(at=_now(), user_name=str(user_name)[:64], action=str(action)[:32],
                                      target=str(target), allowed=bool(allowed)))


def _hashing_slots() -> threading.BoundedSemaphore:
    """The process-wide cap on sign-ins hashed at once (made on first use, sized from the setting)."""
    global _HASHING
    with _HASHING_LOCK:
        if _HASHING is None:
            _HASHING = threading.BoundedSemaphore(settings.sign_in_concurrent())
        return _HASHING


def _hasher():
    from argon2 import PasswordHasher

    return PasswordHasher()


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher().hash(secrets.token_hex(16))
    return _DUMMY_HASH


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

