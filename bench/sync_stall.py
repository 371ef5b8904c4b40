"""Does a slow disk sync hold up everybody's chunks? 64 uploads' chunk latency, alone and
while one upload waits on a slow fdatasync.

Set-up, per code tree (this one, and with `--baseline DIR` another checkout, e.g. main
before the storage seam, run side by side in the same invocation so ratios share one load):
- an API (`python -m api` from that tree) with FT_FSYNC_CHUNKS=1 and its own redis-server;
  no worker (the latencies measured are the API's; finished uploads just wait, assembling);
- its data dir on tmpfs (--tmpfs-dir), where fdatasync costs nothing: the 64 uploads sync
  every chunk and never wait on a device;
- except one upload whose staging directory is a symlink to a directory on the real disk
  (--disk-dir), sending 1 MiB chunks back to back, each fdatasync'ed to that disk;
- and the disk kept busy by the benchmark itself: 4 threads writing 8 MiB blocks with
  O_DIRECT (little CPU, a full device queue), so that each of the slow upload's syncs waits
  tens of milliseconds in the queue (the probe at the start measures it on this machine).

Phases, interleaved per trial and tree: `alone` (64 uploads of --size bytes in --chunk
chunks, one connection each, each sending --rate chunks a second: a load the API keeps up
with, so that latency shows waiting rather than a saturated CPU); `busy disk` (the same
while the disk is kept busy: a control, the 64 uploads do not touch that disk); `slow sync`
(busy disk, and the slow upload syncing).
Reported: p50 / p99 / max of the 64 uploads' chunk latencies, and within each trial
p99(slow sync) / p99(busy disk): the slow sync's own effect, the busy disk's cost (the
O_DIRECT writers take CPU on a small VM) being in both. When the sync blocks the event loop,
every chunk in flight waits for it and the ratio grows with the sync's duration; when it runs
in a thread, the ratio stays near 1.

    .venv/bin/python -m bench.sync_stall [--baseline /tmp/ft-main] [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.client import Http, KiB, MiB, OursTarget, Payload, UploadResult, upload_many  # noqa: E402
from bench.upload import new_id, percentile  # noqa: E402
from ops.redis_server import free_port, start_redis  # noqa: E402
from tests.support import login, service_env, wait_until  # noqa: E402

ADMIN, PASSWORD = "bench", "bench-password-0123456789"
SLOW_CHUNK = 1 * MiB
BUSY_BLOCK = 8 * MiB
BUSY_THREADS = 4


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class BusyDisk:
    """Threads writing to the disk with O_DIRECT, over and over, until stopped."""

    def __init__(self, disk_dir: Path) -> None:
        self.disk_dir = disk_dir
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(k,), daemon=True) for k in range(BUSY_THREADS)]

    def _write(self, k: int) -> None:
        block = mmap.mmap(-1, BUSY_BLOCK)  # page-aligned, as O_DIRECT wants
        block.write(os.urandom(BUSY_BLOCK))
        path = self.disk_dir / f"busy-{k}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0), 0o600)
        try:
            i = 0
            while not self.stop.is_set():
                os.pwrite(fd, block, (i % 64) * BUSY_BLOCK)
                i += 1
        finally:
            os.close(fd)
            path.unlink()

    def __enter__(self) -> BusyDisk:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def sync_probe(disk_dir: Path, size: int = SLOW_CHUNK, rounds: int = 5) -> list[float]:
    """Seconds one fdatasync of `size` freshly written bytes takes on the disk."""
    path = disk_dir / "sync-probe"
    data = os.urandom(size)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    times = []
    try:
        for i in range(rounds):
            os.pwrite(fd, data, i * size)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return times


class Api:
    """redis-server + `python -m api` from `tree` (cwd and PYTHONPATH), FT_FSYNC_CHUNKS=1."""

    def __init__(self, tree: Path, root: Path, name: str) -> None:
        self.tree, self.root, self.name = tree, root, name

    def __enter__(self) -> Api:
        self.root.mkdir(parents=True)
        self.data_dir = self.root / "data"
        port = free_port()
        self.redis = start_redis(port, self.root / "redis", persistent=False)
        api_port = free_port()
        env = service_env(
            self.data_dir,
            f"redis://127.0.0.1:{port}/0",
            FT_HOST="127.0.0.1",
            FT_PORT=str(api_port),
            FT_LOG_LEVEL="warning",
            FT_FSYNC_CHUNKS="1",
            FT_ADMIN_USERNAME=ADMIN,
            FT_ADMIN_PASSWORD=PASSWORD,
            PYTHONPATH=str(self.tree),
        )
        self.log_file = open(self.root / "api.log", "ab")  # closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api"],
            cwd=self.tree,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{api_port}"
        try:
            wait_until(self._up, timeout=60, what=f"the {self.name} API")
            self.token = login(self.url, ADMIN, PASSWORD)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _up(self) -> bool:
        import httpx

        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} API exited: {(self.root / 'api.log').read_text()[-2000:]}")
        return httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log_file", None) is not None:
            self.log_file.close()
        if getattr(self, "redis", None) is not None:
            self.redis.terminate()
            self.redis.wait(10)


class SlowUpload(threading.Thread):
    """One upload whose staging directory lives on the disk: 64 MiB chunks, each synced."""

    def __init__(self, api: Api, disk_dir: Path, payload: Payload, total: int) -> None:
        super().__init__(daemon=True)
        self.api, self.payload, self.total = api, payload, total
        self.file_id = new_id("slow")
        self.target_dir = disk_dir / f"{api.name}-{self.file_id}"
        self.target_dir.mkdir()
        (api.data_dir / "staging" / self.file_id).symlink_to(self.target_dir, target_is_directory=True)
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        http = Http(self.api.url)
        target = OursTarget(self.api.token)
        try:
            start = 0
            while not self.stop.is_set() and start < self.total:
                end = min(start + SLOW_CHUNK, self.total) - 1
                t0 = time.perf_counter()
                target.send(http, None, self.file_id, start, end, self.total, self.payload)
                self.latencies.append(time.perf_counter() - t0)
                start = end + 1
        except BaseException as exc:
            self.error = exc
        finally:
            http.close()

    def finish(self) -> None:
        self.stop.set()
        self.join(120)
        import httpx

        httpx.delete(
            f"{self.api.url}/upload/{self.file_id}", headers={"Authorization": f"Bearer {self.api.token}"}, timeout=30
        )
        shutil.rmtree(self.target_dir, ignore_errors=True)
        if self.error is not None:
            raise self.error


def paced_uploads(
    url: str, token: str, file_ids: list[str], total: int, chunk: int, payload: Payload, rate: float
) -> UploadResult:
    """Several uploads at once, each sending `rate` chunks a second: the API is not saturated,
    so a chunk's latency is its own work plus whatever held the event loop meanwhile."""
    return upload_many(url, OursTarget(token), file_ids, total, chunk, payload, rate=rate)


def phase(api: Api, payload: Payload, args: argparse.Namespace, disk_dir: Path | None) -> dict:
    """The 64 uploads, alone (disk_dir None) or while a slow upload syncs to `disk_dir`
    (the caller keeps the disk busy)."""
    ids = [new_id("c") for _ in range(args.uploads)]
    slow = None
    if disk_dir is not None:
        slow = SlowUpload(api, disk_dir, payload, 1024 * MiB)
        slow.start()
        wait_until(lambda: len(slow.latencies) >= 1 or slow.error, timeout=60, what="the slow upload's first chunk")
    try:
        result = paced_uploads(api.url, api.token, ids, args.size, args.chunk, payload, args.rate)
    finally:
        if slow is not None:
            slow.finish()
        for file_id in ids:
            shutil.rmtree(api.data_dir / "staging" / file_id, ignore_errors=True)
    lat = result.latencies
    row = {
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": max(lat) * 1000,
        "mbps": result.mbps,
        "chunks": len(lat),
    }
    if slow is not None:
        row["slow_chunks"] = len(slow.latencies)
        row["slow_chunk_median_ms"] = statistics.median(slow.latencies) * 1000 if slow.latencies else float("nan")
        row["slow_chunk_max_ms"] = max(slow.latencies) * 1000 if slow.latencies else float("nan")
    return row


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_stall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="", help="another checkout to compare (e.g. main before the seam)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=64)
    parser.add_argument("--size", type=int, default=2 * MiB, help="bytes per upload")
    parser.add_argument("--chunk", type=int, default=64 * KiB)
    parser.add_argument("--rate", type=float, default=4.0, help="chunks per second per upload")
    parser.add_argument("--disk-dir", default=os.environ.get("FT_BENCH_DISK_DIR", "/var/tmp"))
    parser.add_argument("--tmpfs-dir", default=os.environ.get("FT_BENCH_TMPFS_DIR", "/dev/shm"))
    parser.add_argument("--out", default="", help="write the results as JSON here too")
    args = parser.parse_args(argv)

    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = Path(args.baseline).resolve()
    tmp_root = Path(tempfile.mkdtemp(prefix="ft-sync-stall-", dir=args.tmpfs_dir))
    disk_root = Path(tempfile.mkdtemp(prefix="ft-sync-stall-", dir=args.disk_dir))
    payload = Payload(256 * MiB)
    payload.prepare(1024 * MiB, SLOW_CHUNK)
    payload.prepare(args.size, args.chunk)
    quiet = sync_probe(disk_root)
    with BusyDisk(disk_root):
        time.sleep(0.5)
        busy = sync_probe(disk_root)
    for label, probe in (("quiet", quiet), ("busy", busy)):
        times = ", ".join(f"{t * 1000:.0f}" for t in probe)
        log(f"fdatasync of {SLOW_CHUNK // MiB} MiB on {args.disk_dir}, {label} disk: {times} ms")
    results: dict = {
        "sync_probe_quiet_ms": [t * 1000 for t in quiet],
        "sync_probe_busy_ms": [t * 1000 for t in busy],
        "args": vars(args),
        "trials": [],
    }
    apis: dict[str, Api] = {}
    try:
        for name, tree in trees.items():
            apis[name] = Api(tree, tmp_root / name, name).__enter__()
        # Warm-up: imports, first connections, page faults.
        for api in apis.values():
            phase(api, payload, argparse.Namespace(**{**vars(args), "uploads": 8}), None)
        for trial in range(args.trials):
            rows: dict = {}
            for name, api in apis.items():
                for label in ("alone", "busy disk", "slow sync"):
                    if label == "alone":
                        row = phase(api, payload, args, None)
                    else:
                        with BusyDisk(disk_root):
                            row = phase(api, payload, args, disk_root if label == "slow sync" else None)
                    rows[f"{name} / {label}"] = row
                    log(
                        f"trial {trial + 1} {name:8} {label:9}: p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:7.1f}"
                        f" ms  max {row['max_ms']:7.1f} ms  {row['mbps']:6.1f} MB/s"
                        + (
                            f"  (slow upload: {row['slow_chunks']} chunks, median {row['slow_chunk_median_ms']:.0f} ms)"
                            if "slow_chunks" in row
                            else ""
                        )
                    )
                busy = rows[f"{name} / busy disk"]["p99_ms"]
                rows[f"{name} / p99 ratio"] = ratio = rows[f"{name} / slow sync"]["p99_ms"] / busy
                rows[f"{name} / p99 ratio busy disk"] = control = busy / rows[f"{name} / alone"]["p99_ms"]
                log(f"trial {trial + 1} {name:8} p99 slow sync / busy {ratio:.2f} (busy disk / alone {control:.2f})")
            results["trials"].append(rows)
    finally:
        for api in apis.values():
            api.__exit__()
        shutil.rmtree(tmp_root, ignore_errors=True)
        shutil.rmtree(disk_root, ignore_errors=True)
    for name in trees:
        ratios = [t[f"{name} / p99 ratio"] for t in results["trials"]]
        controls = [t[f"{name} / p99 ratio busy disk"] for t in results["trials"]]
        log(
            f"{name}: p99(slow sync) / p99(busy disk) per trial: {', '.join(f'{r:.2f}' for r in ratios)};"
            f" control p99(busy disk) / p99(alone): {', '.join(f'{r:.2f}' for r in controls)}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
