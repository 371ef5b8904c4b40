"""CPU the API spends per 64 KiB chunk request, read from /proc (not wall time: the machine
is shared, and CPU seconds per request hold still under load where throughput does not).

    .venv/bin/python -m bench.chunk_cpu [--chunks 2000] [--connections 4] [--runs 3] [--py-spy out.svg]

Starts our stack (own redis-server, one API, one worker), warms it up, then sends `--chunks`
chunks (1 MiB files in 64 KiB chunks, as bench/devices.py) over `--connections` keep-alive
connections and reports the API process's utime+stime per chunk, per run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.devices import CHUNK, FILE_SIZE, Connection, OurChunks, Payload, Tally  # noqa: E402
from bench.stack import OurStack  # noqa: E402

CHUNKS_PER_FILE = FILE_SIZE // CHUNK


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of one process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def send(url: str, token: str, prefix: str, files: int, connections: int) -> Tally:
    payload, protocol, tally = Payload(), OurChunks(token), Tally()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for index in range(files):
        queue.put_nowait(f"{prefix}-{index}")

    async def device() -> None:
        conn = await Connection.open(url)
        try:
            while not queue.empty():
                await protocol.upload(conn, queue.get_nowait(), payload, tally)
        finally:
            conn.close()

    await asyncio.gather(*(device() for _ in range(connections)))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument(
        "--py-spy", help="record a flame graph (.svg) or collapsed stacks (.txt) of the API in the last run"
    )
    args = parser.parse_args()
    files = max(1, args.chunks // CHUNKS_PER_FILE)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, OurStack(Path(tmp) / "stack") as stack:
        pid = stack.api.pid
        asyncio.run(send(stack.url, stack.token, "warm", 8, args.connections))
        results = []
        for run in range(args.runs):
            spy = None
            if args.py_spy and run == args.runs - 1:
                spy = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--nonblocking",
                        "-r",
                        "250",
                        "-o",
                        args.py_spy,
                        "-f",
                        "raw" if args.py_spy.endswith(".txt") else "flamegraph",
                        "--pid",
                        str(pid),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(1)
            before, started = cpu_seconds(pid), time.perf_counter()
            tally = asyncio.run(send(stack.url, stack.token, f"r{run}", files, args.connections))
            (user, system), wall = cpu_seconds(pid), time.perf_counter() - started
            user, system = user - before[0], system - before[1]
            cpu = user + system
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            chunks = files * CHUNKS_PER_FILE
            errors = sum(tally.errors.values())
            results.append(cpu / chunks * 1e6)
            print(
                f"run {run}: {chunks} chunks, {errors} errors {dict(tally.errors)}, API cpu {cpu:.2f}s "
                f"= {cpu / chunks * 1e6:.0f} us/chunk (user {user / chunks * 1e6:.0f}, "
                f"system {system / chunks * 1e6:.0f}), wall {wall:.1f}s, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        results.sort()
        print(f"API CPU per chunk: median {results[len(results) // 2]:.0f} us, min {results[0]:.0f} us")


if __name__ == "__main__":
    main()
