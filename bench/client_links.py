"""The client (client/) on bad links and on resume: what it costs, not how fast the machine is.

    .venv/bin/python -m bench.client_links [--only wire,resume] [--dir /var/tmp]

- wire: bytes on the wire per byte of file for an upload with default settings through a
  proxy that cuts every connection after N bytes from the client (tests/tcp_proxy.py), for N =
  1, 8 and 64 MiB, and with no cuts. Ratios, not speeds: the machine is shared.
- resume: time to the first byte sent of a resumed upload of a large file, with the hash
  journal (an unchanged file is not read again) and without it (the whole file hashed first,
  as every resume did before the journal).

`make bench` runs both as its `client` section; run alone, this prints the same table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stack import ADMIN, PASSWORD, OurStack  # noqa: E402
from client import Client  # noqa: E402
from client.progress import Reporter, Task  # noqa: E402
from client.units import GiB, MiB, format_size  # noqa: E402
from tests.tcp_proxy import TcpProxy  # noqa: E402

CUTS = (1 * MiB, 8 * MiB, 64 * MiB, None)


class FirstByte(Exception):
    """Raised from the progress report at the first payload byte sent: the measurement is done."""


class _StopAt(Task):
    def __init__(self, started: float, stop_after: int, seen: list[float]) -> None:
        self.started, self.stop_after, self.seen, self.sent = started, stop_after, seen, 0

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        if not self.seen:
            self.seen.append(time.perf_counter() - self.started)
        self.sent += n
        if self.sent >= self.stop_after:
            raise FirstByte()


class StopAfter(Reporter):
    """Stops an upload once `stop_after` payload bytes went out; records when the first did."""

    def __init__(self, stop_after: int) -> None:
        self.stop_after = stop_after
        self.started = time.perf_counter()
        self.first_byte: list[float] = []

    def task(self, description: str, total: int, completed: int = 0) -> Task:
        if description.startswith("upload "):
            return _StopAt(self.started, self.stop_after, self.first_byte)
        return Task()


def _random_file(path: Path, size: int, block: int = 8 * MiB) -> None:
    with open(path, "wb") as handle:
        for offset in range(0, size, block):
            handle.write(os.urandom(min(block, size - offset)))


def wire_ratios(work: Path, size: int, log: Callable[[str], None]) -> dict:
    """One upload of a `size`-byte random file per cut length, default client settings."""
    rows: dict[str, dict] = {}
    work.mkdir(parents=True, exist_ok=True)
    src = work / "wire.bin"
    _random_file(src, size)
    old = time.time_ns() - 60 * 10**9
    os.utime(src, ns=(old, old))
    try:
        with OurStack(work / "stack", FT_MIN_FREE_BYTES="0") as stack:
            for cut in CUTS:
                name = f"cut every {format_size(cut)}" if cut else "no cuts"
                with (
                    TcpProxy(stack.url, cut_up_after=cut) as proxy,
                    Client(proxy.url, ADMIN, PASSWORD, cache_dir=work / "cache") as client,
                ):
                    started = time.perf_counter()
                    result = client.upload(src, f"wire-{cut or 0}")
                    seconds = time.perf_counter() - started
                    rows[name] = {
                        "cut_bytes": cut,
                        "file_bytes": size,
                        "wire_bytes": proxy.up,
                        "ratio": proxy.up / size,
                        "cuts": proxy.cuts,
                        "connections": proxy.connections,
                        "chunks": result.chunks_sent,
                        "retries": result.retries,
                        "seconds": seconds,
                    }
                    client.delete(result.file_id)
                log(
                    f"  {name}: {proxy.up / size:.3f}x the file on the wire, {proxy.cuts} cuts, "
                    f"{result.chunks_sent} chunks, {seconds:.1f} s"
                )
    finally:
        src.unlink(missing_ok=True)
    return rows


def resume_first_byte(work: Path, size: int, rounds: int, log: Callable[[str], None]) -> dict:
    """Seconds from `upload()` to the first byte sent, resuming an upload of a `size`-byte file
    (sparse, its first 64 MiB random), with and without the hash journal; interleaved rounds."""
    work.mkdir(parents=True, exist_ok=True)
    src = work / "resume.bin"
    with open(src, "wb") as handle:
        handle.write(os.urandom(64 * MiB))
        handle.truncate(size)
    old = time.time_ns() - 60 * 10**9
    os.utime(src, ns=(old, old))
    cache = work / "cache"
    times: dict[str, list[float]] = {"without journal": [], "with journal": []}
    try:
        with OurStack(work / "stack", FT_MIN_FREE_BYTES="0") as stack:

            def upload(stop_after: int) -> float | None:
                reporter = StopAfter(stop_after)
                with (
                    Client(stack.url, ADMIN, PASSWORD, cache_dir=cache, reporter=reporter) as client,
                    contextlib.suppress(FirstByte),
                ):
                    client.upload(src, "resume")
                return reporter.first_byte[0] if reporter.first_byte else None

            upload(16 * MiB + 1)  # the first run: hashes, stores two 8 MiB chunks, is cut off
            for round_ in range(rounds):
                shutil.rmtree(cache / "hashes", ignore_errors=True)
                times["without journal"].append(upload(1))  # hashes, and records it in the journal
                times["with journal"].append(upload(1))
                log(
                    f"  round {round_ + 1}: first byte after {times['without journal'][-1]:.3f} s without the "
                    f"journal, {times['with journal'][-1]:.3f} s with it"
                )
            with Client(stack.url, ADMIN, PASSWORD, cache_dir=cache) as client:
                client.delete("resume")
    finally:
        src.unlink(missing_ok=True)
    return {
        "file_bytes": size,
        "rounds": rounds,
        **{name: {"seconds": values, "median": statistics.median(values)} for name, values in times.items()},
    }


def run(
    work_dir: str,
    log: Callable[[str], None],
    wire_size: int = 256 * MiB,
    resume_size: int = 2 * GiB,
    rounds: int = 3,
    only: set[str] = frozenset({"wire", "resume"}),
) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="ft-client-bench-", dir=work_dir) as tmp:
        if "wire" in only:
            log(f"== client: bytes on the wire through a cutting proxy ({format_size(wire_size)} file)")
            results["wire"] = wire_ratios(Path(tmp) / "wire", wire_size, log)
        if "resume" in only:
            log(f"== client: time to first byte of a resumed upload ({format_size(resume_size)} file)")
            results["resume"] = resume_first_byte(Path(tmp) / "resume", resume_size, rounds, log)
    return results


def render(results: dict) -> list[str]:
    """Markdown for docs/BENCHMARKS.md (or the terminal)."""
    lines: list[str] = []
    wire = results.get("wire")
    if wire:
        size = next(iter(wire.values()))["file_bytes"]
        lines += [
            "### Client on a link that drops",
            "",
            f"One upload of a {format_size(size)} random file with default settings (`--chunk-size 8MiB`, "
            "adaptive), through a proxy that cuts every connection after N bytes from the client. "
            "Wire bytes count everything the client sent: chunks cut off, requests, status checks.",
            "",
            "| link | wire / file | cuts | chunks | retries | seconds |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in wire.items():
            lines.append(
                f"| {name} | {row['ratio']:.3f} | {row['cuts']} | {row['chunks']} | {row['retries']} "
                f"| {row['seconds']:.1f} |"
            )
        lines.append("")
    resume = results.get("resume")
    if resume:
        without, with_ = resume["without journal"], resume["with journal"]
        lines += [
            "### Client resume: time to first byte",
            "",
            f"Resuming the upload of a {format_size(resume['file_bytes'])} file (two chunks already "
            f"stored), from `upload()` to the first payload byte sent; median of {resume['rounds']} "
            "interleaved rounds.",
            "",
            "| | first byte after (s) | rounds |",
            "|---|---:|---|",
            f"| without the hash journal (whole file hashed first) | {without['median']:.3f} | "
            + ", ".join(f"{v:.3f}" for v in without["seconds"])
            + " |",
            f"| with the hash journal (unchanged file) | {with_['median']:.3f} | "
            + ", ".join(f"{v:.3f}" for v in with_["seconds"])
            + " |",
            "",
        ]
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.client_links", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="wire,resume", help="wire, resume or both (default)")
    parser.add_argument(
        "--dir",
        default=os.environ.get("FT_BENCH_DISK_DIR", "/var/tmp"),
        help="where the files and the stack's data go (default /var/tmp)",
    )
    parser.add_argument("--wire-size", type=int, default=256, help="MiB (default 256)")
    parser.add_argument("--resume-size", type=int, default=2048, help="MiB (default 2048)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    only = {part.strip() for part in args.only.split(",") if part.strip()}
    results = run(args.dir, log, args.wire_size * MiB, args.resume_size * MiB, args.rounds, only)
    print("\n".join(render(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
