"""Instructions the API executes per 64 KiB chunk request (or tus PATCH), counted by valgrind's
callgrind: a figure that does not move with the load of a shared machine, unlike CPU seconds
(bench/chunk_cpu.py) or throughput. User space only: the kernel's share (socket writes to Redis
and to the client, pwrite) is not in it, so read it beside chunk_cpu's system time.

    .venv/bin/python -m bench.chunk_instr [--chunks 160] [--connections 4] [--tus] [--out callgrind.out]

Starts redis-server and one worker, then the API under `valgrind --tool=callgrind` with
instrumentation off; warms up, switches it on (`callgrind_control -i on`), sends the chunks
(1 MiB files in 64 KiB chunks, as bench/devices.py), dumps, and divides. About 60x slower than
native: 160 chunks are enough (the count varies by under 1 % between runs).
`callgrind_annotate --inclusive=yes OUT` shows where the instructions go (C level: for Python
functions use py-spy with bench/chunk_cpu.py --py-spy).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chunk_cpu import CHUNKS_PER_FILE, send  # noqa: E402
from bench.stack import ADMIN, PASSWORD  # noqa: E402
from ops.redis_server import free_port, start_redis  # noqa: E402
from tests.support import PYTHON, Proc, login, service_env, start_worker, wait_until  # noqa: E402


def callgrind_control(*args: str) -> str:
    return subprocess.run(["callgrind_control", *args], capture_output=True, text=True, check=True).stdout


def total_instructions(out: Path) -> int:
    """The `totals:` (or `summary:`) line of a callgrind dump."""
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=160)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--tus", action="store_true", help="our tus endpoint (PATCHes) instead of POST /upload")
    parser.add_argument("--dir", default="/dev/shm")
    parser.add_argument("--out", help="keep the callgrind dump here")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the API (repeatable)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    files = max(1, args.chunks // CHUNKS_PER_FILE)
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        port = free_port()
        redis = start_redis(port, root / "redis", persistent=False)
        redis_url = f"redis://127.0.0.1:{port}/0"
        env = {"FT_ADMIN_USERNAME": ADMIN, "FT_ADMIN_PASSWORD": PASSWORD, **extra}
        (root / "logs").mkdir()
        worker = start_worker(root / "data", redis_url, root / "logs", **env)
        api_port = free_port()
        out = root / "callgrind.out"
        api = Proc(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                PYTHON,
                "-m",
                "api",
            ],
            service_env(
                root / "data", redis_url, FT_PORT=str(api_port), FT_LOG_LEVEL="warning", FT_HEADER_TIMEOUT="600", **env
            ),
            root / "logs" / "api.log",
        ).start()
        url = f"http://127.0.0.1:{api_port}"
        try:
            wait_until(
                lambda: httpx.get(f"{url}/openapi.json", timeout=20).status_code == 200,
                timeout=600,
                interval=1,
                what="the API under valgrind",
            )
            token = login(url, ADMIN, PASSWORD)
            asyncio.run(send(url, token, "warm", 4, args.connections, args.tus))
            callgrind_control("-i", "on", str(api.pid))
            started = time.perf_counter()
            tally = asyncio.run(send(url, token, "run", files, args.connections, args.tus))
            wall = time.perf_counter() - started
            callgrind_control("-d", str(api.pid))
            dumps = sorted(root.glob("callgrind.out*"), key=lambda p: p.stat().st_mtime)
            instructions = sum(total_instructions(p) for p in dumps if p.stat().st_size)
            chunks = files * CHUNKS_PER_FILE
            what = "tus PATCH" if args.tus else "chunk"
            print(
                f"{chunks} requests ({what}), errors {dict(tally.errors)}, {wall:.0f} s under valgrind: "
                f"{instructions / chunks / 1e6:.3f} M instructions per {what}",
                flush=True,
            )
            if args.out and dumps:
                shutil.copy(dumps[-1], args.out)
        finally:
            api.stop(timeout=60)
            worker.stop()
            redis.terminate()
            redis.wait(10)


if __name__ == "__main__":
    main()
