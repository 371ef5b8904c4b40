"""User administration: `python -m api.users add NAME [--admin] | remove NAME | list`.

The password comes from FT_PASSWORD, else from a prompt. Removing a user revokes its tokens.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import datetime, timezone

from core.config import Settings
from core.users import UserStore


def _read_password(name: str) -> str:
    password = os.environ.get("FT_PASSWORD")
    if password:
        return password
    if not sys.stdin.isatty():
        raise SystemExit("set FT_PASSWORD or run in a terminal to be prompted")
    first = getpass.getpass(f"Password for {name}: ")
    if first != getpass.getpass("Repeat: "):
        raise SystemExit("passwords do not match")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.users", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user, or reset its password and role")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    remove = sub.add_parser("remove", help="delete a user; its tokens stop working")
    remove.add_argument("name")
    sub.add_parser("list", help="list users")
    args = parser.parse_args(argv)

    store = UserStore(Settings().users_db)
    if args.command == "add":
        existed = store.get(args.name) is not None
        try:
            user = store.set(args.name, _read_password(args.name), "admin" if args.admin else "user")
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{'updated' if existed else 'added'} {user.name} ({user.role})")
    elif args.command == "remove":
        if not store.remove(args.name):
            print(f"error: no user {args.name!r}", file=sys.stderr)
            return 1
        print(f"removed {args.name}")
    else:
        for user in store.list():
            created = datetime.fromtimestamp(user.created_at, timezone.utc).isoformat(timespec="seconds")
            print(f"{user.name}\t{user.role}\t{created}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
