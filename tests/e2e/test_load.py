"""Load: 64 concurrent clients upload random files for ~60 s against a private stack (`make test-slow`).

Asserts correctness only: no request fails, every file completes, and the SHA-256 of every final
file on disk is the one the client computed. The figures (MB/s, chunk latency, the API's memory)
are printed, and were copied by hand into docs/RELIABILITY.md; no timing is asserted.

Each client loops: a random file (64 KiB - 8 MiB), cut into random chunks (64 KiB - 1 MiB), sent
in random order with X-File-SHA256; then on to the next. A verifier checks each file once it is
complete and then deletes it, so the disk use stays bounded however fast the machine is.

FT_LOAD_SECONDS and FT_LOAD_CLIENTS change the duration and the number of clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support import bearer, send_chunk, wait_until

pytestmark = pytest.mark.slow

KiB, MiB = 1024, 1024 * 1024
SECONDS = float(os.environ.get("FT_LOAD_SECONDS", "60"))
CLIENTS = int(os.environ.get("FT_LOAD_CLIENTS", "64"))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak so far) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    payload_bytes: int = 0
    chunks: int = 0
    files_sent: int = 0
    errors: list[str] = field(default_factory=list)

    def chunk_done(self, seconds: float, size: int) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.payload_bytes += size
            self.chunks += 1

    def error(self, text: str) -> None:
        with self.lock:
            self.errors.append(text)


def client_loop(url: str, token: str, deadline: float, seed: int, tally: Tally, finished: queue.Queue) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < deadline and not tally.errors:
            size = rng.randint(64 * KiB, 8 * MiB)
            data = rng.randbytes(size)
            sha = hashlib.sha256(data).hexdigest()
            file_id = f"load-{uuid.uuid4().hex[:16]}"
            ranges, start = [], 0
            while start < size:
                end = min(start + rng.randint(64 * KiB, MiB), size) - 1
                ranges.append((start, end))
                start = end + 1
            rng.shuffle(ranges)
            for start, end in ranges:
                began = time.perf_counter()
                try:
                    r = send_chunk(client, url, token, file_id, data, start, end, X_File_SHA256=sha)
                except httpx.HTTPError as exc:
                    tally.error(f"{file_id} {start}-{end}: {exc!r}")
                    return
                if r.status_code != 200:
                    tally.error(f"{file_id} {start}-{end}: {r.status_code} {r.text[:200]}")
                    return
                tally.chunk_done(time.perf_counter() - began, end - start + 1)
            with tally.lock:
                tally.files_sent += 1
            finished.put((file_id, size, sha))


def verifier_loop(stack, token: str, finished: queue.Queue, results: dict, stop: threading.Event) -> None:
    """Wait for each sent file to complete, hash the final file on disk, then delete it."""
    with httpx.Client(timeout=60) as client:
        pending: list[tuple[str, int, str]] = []
        while not (stop.is_set() and finished.empty() and not pending):
            try:
                while True:
                    pending.append(finished.get_nowait())
            except queue.Empty:
                pass
            still = []
            for file_id, size, sha in pending:
                status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
                if status.get("state") in ("uploading", "assembling"):
                    still.append((file_id, size, sha))
                    continue
                path = stack.data_dir / "files" / file_id / "data"
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
                results[file_id] = (status.get("state"), status.get("sha256"), digest, sha, size)
                if status.get("state") == "complete":
                    r = client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token))
                    if r.status_code != 204:
                        results[file_id] = ("delete failed", r.status_code, r.text, sha, size)
            pending = still
            time.sleep(0.2)


def test_64_concurrent_uploads_for_a_minute(make_stack, capsys):
    stack = make_stack()
    token = stack.token()
    api_pid = stack.api.pid
    start_memory = memory_kib(api_pid)
    tally, finished, results, stop = Tally(), queue.Queue(), {}, threading.Event()

    verifier = threading.Thread(target=verifier_loop, args=(stack, token, finished, results, stop), daemon=True)
    verifier.start()
    began = time.monotonic()
    deadline = began + SECONDS
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [
            pool.submit(client_loop, stack.url, token, deadline, seed, tally, finished) for seed in range(CLIENTS)
        ]:
            future.result()
    elapsed = time.monotonic() - began
    end_memory = memory_kib(api_pid)
    stop.set()
    verifier.join(timeout=300)
    assert not verifier.is_alive(), "the verifier did not finish: files stuck in uploading/assembling?"

    assert tally.errors == [], tally.errors[:10]
    assert tally.files_sent > 0 and len(results) == tally.files_sent
    bad = {fid: r for fid, r in results.items() if not (r[0] == "complete" and r[1] == r[2] == r[3])}
    assert bad == {}, list(bad.items())[:10]
    # Everything verified was deleted: nothing left behind in staging or files.
    wait_until(
        lambda: not any(any((stack.data_dir / d).iterdir()) for d in ("staging", "files")),
        timeout=30,
        what="the data directory to be empty again",
    )
    assert httpx.get(f"{stack.url}/health").status_code == 200

    figures = {
        "clients": CLIENTS,
        "seconds": round(elapsed, 1),
        "files": tally.files_sent,
        "chunks": tally.chunks,
        "payload_MiB": round(tally.payload_bytes / MiB, 1),
        "MB_per_s": round(tally.payload_bytes / elapsed / 1e6, 1),
        "chunk_latency_ms_p50": round(percentile(tally.latencies, 0.50) * 1000, 1),
        "chunk_latency_ms_p99": round(percentile(tally.latencies, 0.99) * 1000, 1),
        "chunk_latency_ms_mean": round(statistics.fmean(tally.latencies) * 1000, 1),
        "api_rss_MiB_start": round(start_memory["VmRSS"] / 1024, 1),
        "api_rss_MiB_end": round(end_memory["VmRSS"] / 1024, 1),
        "api_peak_rss_MiB_start": round(start_memory["VmHWM"] / 1024, 1),
        "api_peak_rss_MiB_end": round(end_memory["VmHWM"] / 1024, 1),
        "errors": len(tally.errors),
        "corrupt": len(bad),
    }
    with capsys.disabled():
        print("\nload figures: " + json.dumps(figures))
