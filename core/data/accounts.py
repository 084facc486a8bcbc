"""Team accounts: users with roles, sign-in sessions, the permission check every admin action goes through, audit.

Two modes. **Single-user** (the default, no account exists): one person on loopback, no sign-in, every action
allowed. **Team** (once an account exists, ``python -m core users add``): the app asks for a sign-in, and each
page action passes its session token to core, which looks the token up here and checks the user's role — so a
forged ``st.session_state`` (a role or a name typed in) still cannot start, promote or delete a run or import data.
The shell is trusted (whoever can run ``python -m core`` owns the workspace files anyway): the CLI acts as
:data:`SHELL`.

Passwords are argon2id hashes (argon2-cffi); a wrong password is answered after the same hash work whether or not
the user exists, and after a fixed delay. Session tokens are random, stored only as SHA-256, and expire after
``CERVICURVE_SESSION_IDLE_MIN`` minutes without use (default 60). Every admin action is written to ``audit``.
The tables live in the annotation database (SQLite or PostgreSQL), beside the store's.
"""
from __future__ import annotations

import argparse
import getpass
import hashlib
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import (Boolean, Column, DateTime, Integer, MetaData, String, Table, Text, func, insert, select,
                        update)

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
}
WRONG_PASSWORD_DELAY_S = 0.5
_DUMMY_HASH: str | None = None

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


class AccountError(ValueError):
    """A user that cannot be added or changed (bad name, unknown role, duplicate)."""


class PermissionDenied(PermissionError):
    """The signed-in user's role does not allow the action (or the session is missing or expired)."""


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


class Accounts(Database):
    """Users, sessions and the audit log of one annotation database."""

    def __init__(self, url: str | None = None):
        super().__init__(url)
        with self._write() as conn:
            metadata.create_all(conn)

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
        """A session token, or None. Wrong name and wrong password cost the same hash work and the same delay."""
        from argon2.exceptions import InvalidHashError, VerificationError

        with self._read() as conn:
            row = conn.execute(select(users).where(users.c.name == (name or "").strip())).mappings().first()
        stored = row["password_hash"] if row else _dummy_hash()
        try:
            _hasher().verify(stored, password or "")
            good = row is not None and not row["disabled"]
        except (VerificationError, InvalidHashError):
            good = False
        if not good:
            time.sleep(WRONG_PASSWORD_DELAY_S)
            return None
        token = secrets.token_urlsafe(32)
        with self._write() as conn:
            conn.execute(insert(sessions).values(token_sha256=_digest(token), user_name=row["name"], created_at=_now(),
                                                 last_seen=_now(), ended=False))
        return token

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
                select(sessions.c.last_seen, sessions.c.ended, users.c.name, users.c.role, users.c.disabled)
                .join(users, users.c.name == sessions.c.user_name)
                .where(sessions.c.token_sha256 == _digest(token))).mappings().first()
            if row is None or row["ended"] or row["disabled"] or _now() - _aware(row["last_seen"]) > idle_limit():
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
                raise PermissionDenied(f"{action}: sign in first (no live session)")
        allowed = user.may(action)
        if PERMISSIONS.get(action, "admin") == "admin" or not allowed:
            with self._write() as conn:
                conn.execute(insert(audit).values(at=_now(), user_name=user.name, action=action, target=str(target),
                                                  allowed=allowed))
        if not allowed:
            raise PermissionDenied(f"{action}: user {user.name!r} is {user.role}; it needs "
                                   f"{PERMISSIONS.get(action, 'admin')}")
        return user

    def audit_log(self, limit: int = 100) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(select(audit).order_by(audit.c.id.desc()).limit(limit)).mappings().all()
        return [dict(r) for r in rows]


def authorize(actor: "str | User | None", action: str, target: str = "", url: str | None = None) -> User:
    """:meth:`Accounts.authorize` on the workspace's database (or ``url``'s)."""
    with Accounts(url) as accounts:
        return accounts.authorize(actor, action, target)


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


# ---------------------------------------------------------------------------------------------- CLI
def configure_users(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create an account (the password is asked, never taken from the command line)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    sub.add_parser("list", help="accounts, roles and whether they are disabled")
    role = sub.add_parser("set-role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    off = sub.add_parser("disable", help="stop a user signing in (their sessions end)")
    off.add_argument("name")
    sub.add_parser("audit", help="the latest admin actions")


def run_users(args: argparse.Namespace) -> int:
    try:
        with Accounts() as accounts:
            if args.action == "add":
                # from the terminal, or one line on stdin for scripts; never an argument (it would sit in the history)
                password = getpass.getpass(f"password for {args.name}: ") if sys.stdin.isatty() else \
                    sys.stdin.readline().rstrip("\n")
                accounts.add_user(args.name, password, args.role)
                accounts.authorize(SHELL, "manage_users", f"add {args.name} as {args.role}")
                print(f"added {args.name} ({args.role}); sign-in is now on for this workspace")
            elif args.action == "list":
                for row in accounts.list_users():
                    print(f"{row['name']:<24} {row['role']:<10} {'disabled' if row['disabled'] else 'active'}")
            elif args.action == "set-role":
                accounts.set_role(args.name, args.role)
                accounts.authorize(SHELL, "manage_users", f"{args.name} -> {args.role}")
                print(f"{args.name} is now {args.role}")
            elif args.action == "disable":
                accounts.disable(args.name)
                accounts.authorize(SHELL, "manage_users", f"disable {args.name}")
                print(f"{args.name} is disabled")
            elif args.action == "audit":
                for row in accounts.audit_log():
                    print(f"{row['at']:%Y-%m-%d %H:%M:%S} {row['user_name']:<16} {row['action']:<12} "
                          f"{'ok' if row['allowed'] else 'REFUSED':<8} {row['target']}")
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

