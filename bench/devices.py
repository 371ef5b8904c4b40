"""Many devices at once: N clients, each on its own keep-alive connection, each uploading one
1 MiB file in 64 KiB chunks, all starting together, pausing a think time between its chunks
(uniform in 0.5-1.5 x `--think-ms`, 50 ms by default: a device producing or relaying data, not a
loop hammering the server in lockstep). One process, one asyncio loop, raw streams.

    .venv/bin/python -m bench.devices [--devices 64,256,1000] [--servers ours,tus] [--dir /dev/shm]
    .venv/bin/python -m bench --only devices          (the same inside `make bench`, into BENCHMARKS.md)

What it reports per server and N: uploads whose every chunk was acknowledged (and, for ours,
how many files then reached `complete` and when), completed uploads per second, errors by
status, p50/p99/max request latency (request sent -> answer read; every request a
device makes: our chunks, tus creation POSTs and PATCHes), and the server's peak RSS.
A device that gets an error stops (as a client without retries would): an upload counts only
when all of its chunks were accepted. Every run is bounded (`--deadline` seconds).

Servers: `ours` (POST /upload/{id} with the chunk header), `tus` (@tus/server + @tus/file-store
from bench/refs.py: POST /files then PATCHes). `ours-tus` (our own /files/ tus endpoint) is
measured too once the API answers `OPTIONS /files/` with `Tus-Version`: the same tus device
with our bearer token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import zlib
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import descendants, peak_rss_mib, reset_peak, self_cpu_seconds, tree_cpu_seconds  # noqa: E402
from core.chunk_header import encode_header  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
FILE_SIZE = 1 * MiB
CHUNK = 64 * KiB
COUNTS = (64, 256, 1000)
THINK_MS = 50.0


# --- one connection ---------------------------------------------------------------------------


class Connection:
    """A raw HTTP/1.1 keep-alive connection: send a head and a body, read one answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 * MiB)
        return cls(reader, writer, parts.netloc)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.writer.write(head.encode("latin-1"))
        if body:
            self.writer.write(body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        answer = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if answer.get("transfer-encoding", "").lower() == "chunked":
            content = await self._read_chunked()
        else:
            content = await self.reader.readexactly(int(answer.get("content-length", "0")))
        return status, answer, content

    async def _read_chunked(self) -> bytes:
        content = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            content += await self.reader.readexactly(size + 2)
            if size == 0:
                return content

    def close(self) -> None:
        self.writer.close()


# --- what a device sends -----------------------------------------------------------------------


@dataclass
class Tally:
    """What the devices of one run saw."""

    completed: int = 0
    completed_ids: list[str] = field(default_factory=list)
    think_s: float = THINK_MS / 1000
    errors: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def error(self, what: str, detail: str = "") -> None:
        self.errors[what] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{what}: {detail[:200]}")

    async def timed(self, conn: Connection, *args, **kwargs) -> tuple[int, dict, bytes]:
        if self.think_s and self.latencies:
            await asyncio.sleep(self.think_s * random.uniform(0.5, 1.5))
        started = time.perf_counter()
        answer = await conn.request(*args, **kwargs)
        self.latencies.append(time.perf_counter() - started)
        return answer


class Payload:
    """One random 1 MiB file shared by every device, cut into 64 KiB chunks once."""

    def __init__(self) -> None:
        self.data = os.urandom(FILE_SIZE)
        self.chunks = [(start, min(start + CHUNK, FILE_SIZE) - 1) for start in range(0, FILE_SIZE, CHUNK)]
        self.ours = [
            encode_header(s, e, zlib.crc32(self.data[s : e + 1])) + self.data[s : e + 1] for s, e in self.chunks
        ]


class OurChunks:
    """Our protocol: POST /upload/{file_id}, Content-Range, a 12-byte chunk header, the payload."""

    name = "ours"

    def __init__(self, token: str) -> None:
        self.auth = {"Authorization": f"Bearer {token}"}

    async def upload(self, conn: Connection, file_id: str, payload: Payload, tally: Tally) -> bool:
        for (start, end), body in zip(payload.chunks, payload.ours, strict=True):
            headers = {
                **self.auth,
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{end}/{FILE_SIZE}",
            }
            status, _, content = await tally.timed(conn, "POST", f"/upload/{file_id}", headers, body)
            if status != 200:
                tally.error(str(status), content.decode(errors="replace"))
                return False
        return True


class TusChunks:
    """tus 1.0: POST {path} (creation) then one PATCH per chunk. `headers` adds e.g. a token."""

    def __init__(self, name: str, path: str = "/files", headers: dict[str, str] | None = None) -> None:
        self.name, self.path = name, path.rstrip("/")
        self.base = {"Tus-Resumable": "1.0.0", **(headers or {})}

    async def upload(self, conn: Connection, file_id: str, payload: Payload, tally: Tally) -> bool:
        # Timed like every other request: ours creates an upload with its first chunk, so a tus
        # device's creation POST belongs in the same latency figures.
        status, answer, content = await tally.timed(
            conn, "POST", self.path + "/", {**self.base, "Upload-Length": str(FILE_SIZE)}
        )
        if status != 201 or "location" not in answer:
            tally.error(f"create {status}", content.decode(errors="replace"))
            return False
        location = urlsplit(answer["location"]).path
        for start, end in payload.chunks:
            headers = {**self.base, "Upload-Offset": str(start), "Content-Type": "application/offset+octet-stream"}
            status, _, content = await tally.timed(conn, "PATCH", location, headers, payload.data[start : end + 1])
            if status != 204:
                tally.error(str(status), content.decode(errors="replace"))
                return False
        return True


# --- one run: N devices at once -----------------------------------------------------------------


async def run_devices(
    url: str, protocol, count: int, payload: Payload, run_id: str, deadline: float, think_ms: float = THINK_MS
) -> dict:
    """`count` devices, each its own connection, started together; bounded by `deadline` seconds."""
    tally = Tally(think_s=think_ms / 1000)
    go = asyncio.Event()
    connected = 0

    async def device(index: int) -> None:
        nonlocal connected
        try:
            conn = await Connection.open(url)
        except OSError as exc:
            tally.error("connect", repr(exc))
            return
        connected += 1
        try:
            await go.wait()
            if await protocol.upload(conn, f"{run_id}-{index}", payload, tally):
                tally.completed += 1
                tally.completed_ids.append(f"{run_id}-{index}")
                tally.finished_at.append(time.perf_counter())
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            tally.error("connection", repr(exc))
        finally:
            conn.close()

    tasks = [asyncio.create_task(device(i)) for i in range(count)]
    # Polls a count that two places change (a connect, a tally.error): a benchmark's set-up.
    while connected + sum(tally.errors.values()) < count and not all(t.done() for t in tasks):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    go.set()
    _done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if pending:
        tally.errors["unfinished at deadline"] += len(pending)
    elapsed = (max(tally.finished_at) if tally.finished_at else time.perf_counter()) - started
    lat = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

    return {
        "devices": count,
        "think_ms": think_ms,
        "completed": tally.completed,
        "completed_ids": tally.completed_ids,
        "seconds": elapsed,
        "uploads_per_s": tally.completed / elapsed if elapsed > 0 else 0.0,
        "errors": dict(tally.errors),
        "error_samples": tally.samples,
        "requests": len(lat),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000 if lat else None,
    }


def back_memory(directory: Path, nbytes: int) -> None:
    """Write and delete `nbytes` in `directory` before a round. This VM backs RAM lazily and
    hands freed RAM back: a round that writes its GBs of files to fresh memory (tmpfs) spends
    a second or more of a server's time in page faults (dd: 0.6 GB/s first, 2.4 GB/s right
    after), and that cost fell on whichever server wrote first; a round on memory just touched
    measures the servers."""
    block = bytes(8 * MiB)
    path = directory / f"back-memory-{os.getpid()}"
    try:
        with open(path, "wb") as sink:
            for _ in range(0, nbytes, len(block)):
                sink.write(block)
    finally:
        path.unlink(missing_ok=True)


def peak_rss_of(pids: list[int]) -> float:
    return sum(peak_rss_mib(p) for pid in pids for p in descendants(pid))


def measure(
    url: str,
    protocol,
    count: int,
    payload: Payload,
    pids: list[int],
    run_id: str,
    deadline: float,
    think_ms: float,
    cpu_groups: dict[str, list[int]] | None = None,
    settle=None,
) -> dict:
    """One run; besides its figures, the CPU each process group (`cpu_groups`, with their
    children) and this client spent per completed upload, up to the end of `settle(row)` (ours:
    until the worker assembled them all): on a machine of two cores the sum of those is what
    bounds uploads per second."""
    for pid in pids:
        for p in descendants(pid):
            reset_peak(p)
    groups = cpu_groups or {"server": pids}
    before = {name: tree_cpu_seconds(group) for name, group in groups.items()}
    client_before = self_cpu_seconds()
    row = uvloop.run(run_devices(url, protocol, count, payload, run_id, deadline, think_ms))
    row["peak_rss_mib"] = peak_rss_of(pids)
    if settle is not None:
        settle(row)
    spent = {name: tree_cpu_seconds(group) - before[name] for name, group in groups.items()}
    spent["client"] = self_cpu_seconds() - client_before
    row["cpu_ms_per_upload"] = {name: 1000 * s / max(row["completed"], 1) for name, s in spent.items()}
    return row


def wait_all_complete(stack, uploaded: list[str], deadline: float) -> tuple[int, float]:
    """How many of the uploads whose every chunk was accepted reached `complete`, and the
    seconds it took from now."""
    started = time.monotonic()
    pending = set(uploaded)
    complete = 0
    while pending and time.monotonic() - started < deadline:
        for file_id in list(pending):
            state = stack.status(file_id).get("state")
            if state in ("complete", "failed"):
                pending.discard(file_id)
                complete += state == "complete"
        if pending:
            time.sleep(0.2)
    return complete, time.monotonic() - started


def wait_worker_idle(stack, deadline: float, quiet: float = 1.0) -> None:
    """Until the worker spent no CPU for `quiet` seconds (its assemblies done), or `deadline`."""
    ends = time.monotonic() + deadline
    last = tree_cpu_seconds([stack.worker.pid])
    while time.monotonic() < ends:
        time.sleep(quiet)
        now = tree_cpu_seconds([stack.worker.pid])
        if now - last < 0.02:  # two clock ticks: heartbeats, not assemblies
            return
        last = now


def ours_tus_available(stack) -> bool:
    """Whether our API serves tus on /files/ yet (another part of the project adds it)."""
    answer = stack.client.options("/files/", headers={"Tus-Resumable": "1.0.0"})
    return answer.status_code in (200, 204) and "tus-version" in answer.headers


def bench_devices(
    counts: tuple[int, ...],
    servers: tuple[str, ...],
    work_dir: str,
    log,
    deadline: float = 180.0,
    env: dict[str, str] | None = None,
    think_ms: float = THINK_MS,
) -> dict:
    """Every server at every N, on fresh data directories under `work_dir`; rows by server then N."""
    from bench.refs import TusServer, tus_install
    from bench.stack import OurStack

    payload = Payload()
    results: dict[str, dict] = {}
    root = Path(tempfile.mkdtemp(prefix="ft-devices-", dir=work_dir))
    with ExitStack() as exits:
        targets = []
        if "ours" in servers or "ours-tus" in servers:
            stack = exits.enter_context(OurStack(root / "ours", **(env or {})))
            ours_cpu = {"api": [stack.api.pid], "worker": [stack.worker.pid], "redis": [stack.redis.pid]}
            if "ours" in servers:
                targets.append((OurChunks(stack.token), stack.url, [stack.api.pid], stack, ours_cpu))
            if "ours-tus" in servers and ours_tus_available(stack):
                targets.append(
                    (
                        TusChunks("ours-tus", "/files", {"Authorization": f"Bearer {stack.token}"}),
                        stack.url,
                        [stack.api.pid],
                        stack,
                        ours_cpu,
                    )
                )
        if "tus" in servers and tus_install(log) is not None:
            tus = exits.enter_context(TusServer(root / "tus-store", root / "tus.log"))
            targets.append((TusChunks("tus"), tus.url, tus.pids, None, {"server": tus.pids}))
        for count in counts:
            for protocol, url, pids, stack, cpu_groups in targets:
                run_id = f"dev{count}-{protocol.name}-{os.urandom(3).hex()}"
                log(f"devices: {count} x {protocol.name} ...")
                settle = None
                if stack is not None and protocol.name == "ours":

                    def settle(row: dict, stack=stack) -> None:
                        row["complete"], row["complete_after_s"] = wait_all_complete(
                            stack, row["completed_ids"], deadline
                        )

                elif stack is not None:  # our tus endpoint: its ids are the server's; wait for a quiet worker

                    def settle(row: dict, stack=stack) -> None:
                        wait_worker_idle(stack, deadline)

                back_memory(root, 2 * count * FILE_SIZE)  # the staged and the final bytes
                row = measure(url, protocol, count, payload, pids, run_id, deadline, think_ms, cpu_groups, settle)
                row.pop("completed_ids")
                if stack is not None and protocol.name == "ours":
                    for i in range(count):
                        stack.remove(f"{run_id}-{i}")
                log(f"  {describe(protocol.name, row)}")
                results.setdefault(protocol.name, {})[str(count)] = row
            if "tus" in servers and any(p.name == "tus" for p, *_ in targets):
                tus.clear()
    return results


def describe(name: str, row: dict) -> str:
    errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "none"
    complete = f", {row['complete']} complete after {row['complete_after_s']:.1f} s" if "complete" in row else ""
    p50, p99 = row["p50_ms"] or 0.0, row["p99_ms"] or 0.0
    cpu = " ".join(f"{k} {v:.1f}" for k, v in row.get("cpu_ms_per_upload", {}).items())
    return (
        f"{name:8s} {row['devices']:5d} devices: {row['completed']}/{row['devices']} uploads in {row['seconds']:.1f} s"
        f" = {row['uploads_per_s']:.1f}/s, chunk p50 {p50:.0f} ms p99 {p99:.0f} ms, errors {errors},"
        f" peak RSS {row['peak_rss_mib']:.0f} MiB{complete}; CPU ms per upload: {cpu}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.devices", description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default=",".join(map(str, COUNTS)), help="comma-separated device counts")
    parser.add_argument("--servers", default="ours,ours-tus,tus", help="ours, ours-tus, tus")
    parser.add_argument("--dir", default=os.environ.get("FT_BENCH_TMPFS_DIR", "/dev/shm"), help="data directories here")
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds one run may take")
    parser.add_argument("--think-ms", type=float, default=THINK_MS, help="mean pause between a device's chunks")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FT_NAME=VALUE",
        help="a setting for our API and worker (e.g. FT_API_WORKERS=2); the stack ignores FT_ variables of this shell",
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    counts = tuple(int(n) for n in args.devices.split(",") if n)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    results = bench_devices(
        counts, servers, args.dir, lambda m: print(m, flush=True), args.deadline, env=env, think_ms=args.think_ms
    )
    for name, rows in results.items():
        for row in rows.values():
            print(describe(name, row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
