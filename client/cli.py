"""`python -m client upload|download|status|delete|login`: the command line over client.api.Client."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import sys

from client.api import DEFAULT_CHUNK_SIZE, DEFAULT_URL, Client
from client.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_COMPLETE, EXIT_OK, ClientError
from client.progress import make_reporter
from client.units import format_size, parse_size

EPILOG = f"""\
environment: FT_URL (default {DEFAULT_URL}), FT_USERNAME, FT_PASSWORD, FT_CLIENT_CACHE_DIR (tokens and
the SHA-256 journal of uploaded files, default ~/.cache/ft-client).
exit status: 0 complete and SHA-256 verified, 1 failed, 2 usage, 3 not complete, 4 auth,
5 not found, 6 conflict (local file changed / id taken), 7 server unavailable or out of storage.
"""


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Options accepted before and after the subcommand."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    parser.add_argument("--url", default=default(None), help=f"server (default: FT_URL or {DEFAULT_URL})")
    parser.add_argument("--user", "-u", default=default(None), help="user name (default: FT_USERNAME)")
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        default=default(False),
        help="no progress output, only the result line and errors",
    )
    parser.add_argument("--timeout", type=float, default=default(60.0), help="seconds per network operation")
    parser.add_argument(
        "--retries",
        type=int,
        default=default(10),
        help="failed attempts in a row (connection errors, timeouts, 5xx, 429) before giving up",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="File Transfer API client",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("upload", help="upload a file (running it again resumes)")
    _common(up, suppress=True)
    up.add_argument("path")
    up.add_argument("--file-id", help="id on the server (default: file name + hash of path, size, mtime)")
    up.add_argument(
        "--chunk-size",
        type=_size,
        default=DEFAULT_CHUNK_SIZE,
        help="largest chunk, e.g. 8MiB (default), 512KiB; smaller while the link keeps dropping",
    )
    up.add_argument("--parallel", "-p", type=_positive, default=1, help="parallel connections (default 1)")
    up.add_argument("--no-wait", action="store_true", help="do not wait for the server to verify the file")

    down = sub.add_parser("download", help="download a complete file (running it again resumes)")
    _common(down, suppress=True)
    down.add_argument("file_id")
    down.add_argument("-o", "--output", help="file or directory (default: the original name, here)")

    st = sub.add_parser("status", help="show an upload's state")
    _common(st, suppress=True)
    st.add_argument("file_id")
    st.add_argument("--json", action="store_true", help="print the server's JSON")

    rm = sub.add_parser("delete", help="cancel an upload or delete a complete file")
    _common(rm, suppress=True)
    rm.add_argument("file_id")

    login = sub.add_parser("login", help="log in and cache a token")
    _common(login, suppress=True)
    return parser


def _prompt_password() -> str:
    if not sys.stdin.isatty():
        return ""
    return getpass.getpass("password: ")


def _make_client(args, reporter) -> Client:
    username = args.user or os.environ.get("FT_USERNAME")
    if args.command == "login" and not username and sys.stdin.isatty():
        username = input("user name: ").strip() or None
    return Client(
        args.url,
        username,
        reporter=reporter,
        timeout=args.timeout,
        retries=args.retries,
        password_prompt=_prompt_password,
    )


def _status_lines(status: dict) -> list[str]:
    total, received = status["total_bytes"], status["received_bytes"]
    pct = 100.0 * received / total if total else 100.0
    lines = [f"file_id:   {status['file_id']}", f"state:     {status['state']}"]
    if status.get("file_name"):
        lines.append(f"name:      {status['file_name']}")
    lines.append(
        f"received:  {received} of {total} bytes ({format_size(received)} of {format_size(total)}, {pct:.1f}%)"
    )
    missing = status.get("missing_ranges") or []
    if missing:
        shown = ", ".join(f"{s}-{e}" for s, e in missing[:5]) + (" ..." if len(missing) > 5 else "")
        lines.append(f"missing:   {len(missing)} range(s): {shown}")
    if status.get("sha256"):
        lines.append(f"sha256:    {status['sha256']}")
    if status.get("error"):
        lines.append(f"error:     {status['error']}")
    for key in ("created_at", "updated_at", "expires_at"):
        if status.get(key):
            lines.append(f"{key + ':':<10} {status[key]}")
    return lines


def _execute(args, client: Client, reporter, resume_hint: list[str]) -> tuple[int, list[str]]:
    """Run one command; returns its exit status and the result lines, printed once the progress
    bars are finished (so the result is the last thing on the terminal)."""
    if args.command == "login":
        client.login()
        return EXIT_OK, [f"logged in to {client.url} as {client.username}; token cached in {client.tokens.root}"]
    if args.command == "status":
        status = client.status(args.file_id)
        lines = [json.dumps(status, indent=2)] if args.json else _status_lines(status)
        return {"complete": EXIT_OK, "failed": EXIT_FAILED}.get(status["state"], EXIT_NOT_COMPLETE), lines
    if args.command == "delete":
        client.delete(args.file_id)
        return EXIT_OK, [f"deleted {args.file_id}"]
    if args.command == "upload":
        file_id = client.upload_id(args.path, args.file_id)
        resume_hint[:] = [
            f"upload {file_id}",
            f"{_command_line()} --file-id {file_id}" if args.file_id is None else _command_line(),
        ]
        reporter.message(f"uploading {args.path} as {file_id}")
        result = client.upload(args.path, file_id, args.chunk_size, args.parallel, wait=not args.no_wait)
        if args.no_wait:
            return EXIT_NOT_COMPLETE, [
                f"sent {result.file_id}: sent {result.bytes_sent} bytes in "
                f"{result.chunks_sent} chunks; not waiting for verification"
            ]
        return EXIT_OK, [
            f"uploaded {result.file_id}: {result.size} bytes, sha256 {result.sha256} verified "
            f"(sent {result.bytes_sent} bytes in {result.chunks_sent} chunks, {result.retries} retries, "
            f"server had {result.resumed_from} bytes before)"
        ]
    if args.command == "download":
        resume_hint[:] = [f"download {args.file_id}", _command_line()]
        result = client.download(args.file_id, args.output)
        return EXIT_OK, [
            f"downloaded {result.file_id} to {result.path}: {result.size} bytes, sha256 {result.sha256} "
            f"verified (received {result.bytes_received} bytes, resumed at {result.resumed_from}, "
            f"{result.retries} retries)"
        ]
    raise AssertionError(f"unknown command {args.command}")


def _command_line() -> str:
    """How this command was started, to say how to resume it."""
    python = min(sys.executable, os.path.relpath(sys.executable), key=len)
    return " ".join(shlex.quote(part) for part in [python, "-m", "client", *sys.argv[1:]])


def run(args) -> int:
    resume_hint: list[str] = []
    try:
        with make_reporter(args.quiet) as reporter, _make_client(args, reporter) as client:
            code, lines = _execute(args, client, reporter, resume_hint)
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if resume_hint:
            what, command = resume_hint
            print(f"interrupted; {what} resumes where it stopped: {command}", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in lines:
        print(line)
    return code


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
