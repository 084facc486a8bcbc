"""``python -m core users | db``: a team server's accounts and its annotation database."""
from __future__ import annotations

import argparse
import getpass
import sys

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.data import database
from core.data.accounts import ROLES, SHELL, AccountError, Accounts


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
    unlock = sub.add_parser("unlock", help="clear a name's failed sign-ins (it may sign in again at once)")
    unlock.add_argument("name")
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
            elif args.action == "unlock":
                accounts.unlock(args.name)
                accounts.authorize(SHELL, "manage_users", f"unlock {args.name}")
                print(f"{args.name} may sign in again")
            elif args.action == "audit":
                for row in accounts.audit_log():
                    print(f"{row['at']:%Y-%m-%d %H:%M:%S} {row['user_name']:<16} {row['action']:<12} "
                          f"{'ok' if row['allowed'] else 'REFUSED':<8} {row['target']}")
    except AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def configure_db(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("upgrade", help="create missing tables, move the schema to the current version")
    to = sub.add_parser("copy", help="copy every row into an empty database (e.g. SQLite -> PostgreSQL)")
    to.add_argument("--to", required=True, metavar="URL", help="postgresql+psycopg://user@host:5432/name")
    sub.add_parser("backup", help="a consistent copy of the SQLite store in $CERVICURVE_HOME/backups/")


def run_db(args: argparse.Namespace) -> int:
    try:
        if args.action == "upgrade":
            counts = database.upgrade()
            print("schema current; rows: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        elif args.action == "copy":
            counts = database.copy(args.to)
            print(f"copied to {make_url(args.to).render_as_string(hide_password=True)}: "
                  + ", ".join(f"{k} {v}" for k, v in counts.items() if k != "schema_info"))
        elif args.action == "backup":
            print(f"backup written: {database.backup()}")
    except (database.DatabaseError, SQLAlchemyError) as exc:
        print(f"error: {getattr(exc, 'orig', None) or exc}", file=sys.stderr)
        return 2
    return 0
