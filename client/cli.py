"""`python -m client upload|download|status|delete|login`: the command line over client.api.Client."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from client.api import DEFAULT_CHUNK_SIZE, DEFAULT_URL, Client
from client.errors import EXIT_INTERRUPTED, EXIT_NOT_COMPLETE, EXIT_OK, EXIT_FAILED, ClientError
from client.progress import make_reporter
from client.units import format_size, parse_size

EPILOG = """\
environment: FT_URL (default %s), FT_USERNAME, FT_PASSWORD, FT_CLIENT_CACHE_DIR (token cache,
default ~/.cache/ft-client).
exit status: 0 complete and SHA-256 verified, 1 failed, 2 usage, 3 not complete, 4 auth,
5 not found, 6 conflict (local file changed / id taken), 7 server unavailable or out of storage.
""" % DEFAULT_URL


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
    parser.add_argument("--url", default=default(None), help="server (default: FT_URL or %s)" % DEFAULT_URL)
    parser.add_argument("--user", "-u", default=default(None), help="user name (default: FT_USERNAME)")
    parser.add_argument("--quiet", "-q", action="store_true", default=default(False),
                        help="no progress output, only the result line and errors")
    parser.add_argument("--timeout", type=float, default=default(60.0), help="seconds per network operation")
    parser.add_argument("--retries", type=int, default=default(10),
                        help="retries per request on connection errors, timeouts and 5xx")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description="File Transfer API client",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("upload", help="upload a file (running it again resumes)")
    _common(up, suppress=True)
    up.add_argument("path")
    up.add_argument("--file-id", help="id on the server (default: file name + hash of path, size, mtime)")
    up.add_argument("--chunk-size", type=_size, default=DEFAULT_CHUNK_SIZE, help="e.g. 8MiB (default), 512KiB")
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
    return Client(args.url, username, reporter=reporter, timeout=args.timeout, retries=args.retries,
                  password_prompt=_prompt_password)


def _print_status(status: dict) -> None:
    total, received = status["total_bytes"], status["received_bytes"]
    pct = 100.0 * received / total if total else 100.0
    print(f"file_id:   {status['file_id']}")
    print(f"state:     {status['state']}")
    if status.get("file_name"):
        print(f"name:      {status['file_name']}")
    print(f"received:  {received} of {total} bytes ({format_size(received)} of {format_size(total)}, {pct:.1f}%)")
    missing = status.get("missing_ranges") or []
    if missing:
        shown = ", ".join(f"{s}-{e}" for s, e in missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"missing:   {len(missing)} range(s): {shown}")
    if status.get("sha256"):
        print(f"sha256:    {status['sha256']}")
    if status.get("error"):
        print(f"error:     {status['error']}")
    for key in ("created_at", "updated_at", "expires_at"):
        if status.get(key):
            print(f"{key + ':':<10} {status[key]}")


def run(args) -> int:
    reporter = make_reporter(args.quiet)
    try:
        with reporter, _make_client(args, reporter) as client:
            if args.command == "login":
                client.login()
                print(f"logged in to {client.url} as {client.username}; token cached in {client.tokens.root}")
                return EXIT_OK
            if args.command == "status":
                status = client.status(args.file_id)
                if args.json:
                    print(json.dumps(status, indent=2))
                else:
                    _print_status(status)
                return {"complete": EXIT_OK, "failed": EXIT_FAILED}.get(status["state"], EXIT_NOT_COMPLETE)
            if args.command == "delete":
                client.delete(args.file_id)
                print(f"deleted {args.file_id}")
                return EXIT_OK
            if args.command == "upload":
                result = client.upload(args.path, args.file_id, args.chunk_size, args.parallel, wait=not args.no_wait)
                if args.no_wait:
                    print(f"sent {result.file_id}: sent {result.bytes_sent} bytes in {result.chunks_sent} chunks; "
                          f"not waiting for verification")
                    return EXIT_NOT_COMPLETE
                print(f"uploaded {result.file_id}: {result.size} bytes, sha256 {result.sha256} verified "
                      f"(sent {result.bytes_sent} bytes in {result.chunks_sent} chunks, {result.retries} retries, "
                      f"server had {result.resumed_from} bytes before)")
                return EXIT_OK
            if args.command == "download":
                result = client.download(args.file_id, args.output)
                print(f"downloaded {result.file_id} to {result.path}: {result.size} bytes, sha256 {result.sha256} "
                      f"verified (received {result.bytes_received} bytes, resumed at {result.resumed_from}, "
                      f"{result.retries} retries)")
                return EXIT_OK
    except ClientError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    raise AssertionError(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
