"""User administration: `python -m api.users add NAME [--admin] | remove NAME | list`.

The data dir is FT_DATA_DIR, else the one `make run` uses: `data/` in the project's root,
wherever this is run from. The password comes from FT_NEW_PASSWORD, else FT_PASSWORD, else a
prompt (`--prompt` always prompts); the output says which. Removing a user revokes its tokens.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from core.config import Settings
from core.users import User, UserStore

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PASSWORD_VARIABLES = ("FT_NEW_PASSWORD", "FT_PASSWORD")


def data_dir(environ: dict[str, str]) -> Path:
    """FT_DATA_DIR as given (relative to here), else `make run`'s default: ROOT/data."""
    configured = environ.get("FT_DATA_DIR")
    return Path(configured).resolve() if configured else PROJECT_ROOT / "data"


def read_password(name: str, environ: Mapping[str, str], prompt: bool) -> tuple[str, str]:
    """The new password and where it came from."""
    for variable in () if prompt else PASSWORD_VARIABLES:
        if environ.get(variable):
            return environ[variable], variable
    if not sys.stdin.isatty():
        raise SystemExit("error: set FT_NEW_PASSWORD, or run in a terminal to be prompted")
    first = getpass.getpass(f"Password for {name}: ")
    if first != getpass.getpass("Repeat: "):
        raise SystemExit("error: passwords do not match")
    return first, "the prompt"


def _add(store: UserStore, args: argparse.Namespace) -> int:
    existed = store.get(args.name) is not None
    password, source = read_password(args.name, os.environ, args.prompt)
    try:
        user = store.set(args.name, password, "admin" if args.admin else "user")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'updated' if existed else 'added'} {user.name} ({user.role}, id {user.id}); password from {source}")
    return 0


def _remove(store: UserStore, args: argparse.Namespace) -> int:
    removed = store.remove(args.name)
    if removed is None:
        print(f"error: no user {args.name!r}", file=sys.stderr)
        return 1
    print(
        f"removed {removed.name} (id {removed.id}); its tokens stop working. Its uploads and files stay "
        f"on disk, owned by {removed.id}: an admin still sees and can delete them; a new user of the "
        "same name gets a new id and none of them."
    )
    return 0


def _list(store: UserStore, _args: argparse.Namespace) -> int:
    for user in store.list():
        print("\t".join([user.name, user.role, user.id, _iso(user)]))
    return 0


def _iso(user: User) -> str:
    return datetime.fromtimestamp(user.created_at, UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.users", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a user, or reset its password and role")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="give the admin role")
    add.add_argument("--prompt", action="store_true", help="ask for the password even when a variable is set")
    remove = sub.add_parser("remove", help="delete a user; its tokens stop working, its files stay")
    remove.add_argument("name")
    sub.add_parser("list", help="list users: name, role, id, created")
    args = parser.parse_args(argv)

    directory = data_dir(dict(os.environ))
    users_db = Settings(data_dir=directory).users_db
    print(f"data dir: {directory}", file=sys.stderr)
    if args.command != "add" and not users_db.exists():
        print(f"error: no users database at {users_db}; set FT_DATA_DIR to the service's data dir", file=sys.stderr)
        return 1
    command = {"add": _add, "remove": _remove, "list": _list}[args.command]
    return command(UserStore(users_db), args)


if __name__ == "__main__":
    raise SystemExit(main())
