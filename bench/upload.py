"""Upload figures, all on one filesystem per call: our API, @tus/server and the nginx sink side by side."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.client import MiB, OursTarget, Payload, SinkTarget, TusTarget, upload, upload_many
from bench.plan import Plan
from bench.procs import CpuMeter, peak_rss_mib, reset_peak, rss_mib, wait_quiet
from bench.refs import Nginx, TusServer
from bench.runner import Contender, run_interleaved
from bench.stack import OurStack

_ids = itertools.count(1)


def new_id(prefix: str = "b") -> str:
    return f"{prefix}-{int(time.time())}-{next(_ids)}"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class UploadBench:
    """Servers for one filesystem, started once; each method is one table."""

    def __init__(self, plan: Plan, fs: str, base_dir: str, payload: Payload, tus_version: str | None, log) -> None:
        self.plan, self.fs, self.payload, self.log = plan, fs, payload, log
        self.root = Path(tempfile.mkdtemp(prefix=f"ft-bench-{fs}-", dir=base_dir))
        self.tus_enabled = tus_version is not None

    def __enter__(self) -> UploadBench:
        self.exits = contextlib.ExitStack()
        try:
            self.ours = self.exits.enter_context(OurStack(self.root / "ours"))
            self.nginx = self.exits.enter_context(Nginx(self.root / "nginx"))
            self.tus = (
                self.exits.enter_context(TusServer(self.root / "tus-store", self.root / "tus.log"))
                if self.tus_enabled
                else None
            )
        except BaseException:
            self.exits.close()
            raise
        self.warm_up()
        return self

    def __exit__(self, *exc) -> None:
        self.exits.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- plumbing ------------------------------------------------------------------------
    def all_pids(self) -> list[int]:
        pids = self.ours.pids + self.nginx.pids
        return pids + (self.tus.pids if self.tus else [])

    def warm_up(self) -> None:
        """One untimed upload per server: first requests pay for imports, page faults, JIT."""
        fid = new_id("warm")
        upload(self.ours.url, OursTarget(self.ours.token), fid, 64 * MiB, 8 * MiB, self.payload)
        self.ours.wait_complete(fid)
        self.ours.remove(fid)
        upload(self.nginx.url, SinkTarget(), fid, 64 * MiB, 8 * MiB, self.payload)
        if self.tus:
            upload(self.tus.url, TusTarget(), fid, 64 * MiB, 8 * MiB, self.payload)
            self.tus.clear()

    def ours_contender(
        self, name: str, size: int, chunk: int, connections: int = 1, stack: OurStack | None = None
    ) -> Contender:
        ours = stack or self.ours
        api = ours.api.pid
        state: dict = {}

        def run() -> dict:
            state["id"] = fid = new_id()
            reset_peak(api)
            before = rss_mib(api)
            result = upload(ours.url, OursTarget(ours.token), fid, size, chunk, self.payload, connections=connections)
            return {
                "mbps": result.mbps,
                "seconds": result.seconds,
                "api_rss_before_mib": before,
                "api_peak_rss_mib": peak_rss_mib(api),
                "chunks_per_s": len(result.latencies) / result.seconds,
                "p50_ms": statistics.median(result.latencies) * 1000,
            }

        def after(metrics: dict) -> None:
            ours.wait_complete(state["id"])
            ours.remove(state["id"])

        return Contender(name, run, lambda: [api], after)

    def tus_contender(self, name: str, size: int, chunk: int) -> Contender:
        def run() -> dict:
            result = upload(self.tus.url, TusTarget(), new_id(), size, chunk, self.payload)
            return {
                "mbps": result.mbps,
                "seconds": result.seconds,
                "chunks_per_s": len(result.latencies) / result.seconds,
                "p50_ms": statistics.median(result.latencies) * 1000,
            }

        return Contender(name, run, lambda: self.tus.pids, lambda m: self.tus.clear())

    def sink_contender(self, name: str, size: int, chunk: int) -> Contender:
        def run() -> dict:
            result = upload(self.nginx.url, SinkTarget(), new_id(), size, chunk, self.payload)
            return {
                "mbps": result.mbps,
                "seconds": result.seconds,
                "chunks_per_s": len(result.latencies) / result.seconds,
                "p50_ms": statistics.median(result.latencies) * 1000,
            }

        return Contender(name, run, lambda: self.nginx.pids)

    def interleave(self, contenders: list[Contender], trials: int, label: str) -> dict:
        series = run_interleaved(contenders, trials, self.all_pids, self.log, f"{self.fs} {label}")
        return {name: s.values for name, s in series.items()}

    # --- tables ----------------------------------------------------------------------------
    def single(self) -> dict:
        p = self.plan
        contenders = [self.ours_contender("ours", p.single_size, p.chunk)]
        if self.tus:
            contenders.append(self.tus_contender("tus", p.single_size, p.chunk))
        contenders.append(self.sink_contender("nginx-sink", p.single_size, p.chunk))
        result = self.interleave(contenders, p.trials, "1 connection")
        result["_sink_requests_checked"] = self.nginx.check_sink_read_bodies()
        return result

    def parallel(self) -> dict:
        p = self.plan
        contenders = [self.ours_contender(f"ours x{n}", p.single_size, p.chunk, connections=n) for n in p.parallel]
        return self.interleave(contenders, p.trials, "parallel")

    def sweep(self) -> dict:
        p = self.plan
        contenders = [self.ours_contender(f"ours {c}", p.sweep_size(c), c) for c in p.sweep]
        smallest = min(p.sweep)
        if self.tus:
            contenders.append(self.tus_contender(f"tus {smallest}", p.sweep_size(smallest), smallest))
        contenders.append(self.sink_contender(f"nginx-sink {smallest}", p.sweep_size(smallest), smallest))
        return self.interleave(contenders, p.trials, "chunk sweep")

    def fsync(self) -> dict:
        """FT_FSYNC_CHUNKS=1 (every chunk fdatasync'ed, in a thread, before its answer) against
        the default, on a second stack started for this table, interleaved round by round."""
        p = self.plan
        with OurStack(self.root / "ours-fsync", FT_FSYNC_CHUNKS="1") as synced:
            fid = new_id("warm")
            upload(synced.url, OursTarget(synced.token), fid, 16 * MiB, MiB, self.payload)
            synced.wait_complete(fid)
            synced.remove(fid)
            contenders = []
            for chunk in p.fsync_chunks:
                for n in p.fsync_connections:
                    contenders.append(self.ours_contender(f"ours {chunk} x{n}", p.fsync_size, chunk, n))
                    contenders.append(
                        self.ours_contender(f"ours fsync {chunk} x{n}", p.fsync_size, chunk, n, stack=synced)
                    )
            return self.interleave(contenders, p.trials, "FT_FSYNC_CHUNKS")

    def big(self) -> dict:
        """One large upload at a time: API/worker peak RSS; last chunk -> `complete` vs sha256sum."""
        p, ours = self.plan, self.ours
        api = ours.api.pid
        runs = []
        for trial in range(p.big_trials):
            before = wait_quiet(self.all_pids())
            fid = new_id("big")
            workers = ours.worker_pids()
            for pid in [api, *workers]:
                reset_peak(pid)
            rss_before = rss_mib(api)
            with CpuMeter(self.all_pids()) as meter:
                result = upload(ours.url, OursTarget(ours.token), fid, p.big_size, p.chunk, self.payload)
            last_answer = time.perf_counter()
            api_peak = peak_rss_mib(api)
            status, seen = ours.wait_complete(fid, interval=0.002)
            to_complete = seen - last_answer
            worker_peak = max(peak_rss_mib(pid) for pid in workers)
            path = ours.final_path(fid)
            t0 = time.perf_counter()
            out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout
            sha_seconds = time.perf_counter() - t0
            if out.split()[0] != status["sha256"]:
                raise RuntimeError(f"sha256sum {out.split()[0]} != the API's {status['sha256']}")
            openssl_seconds = float("nan")
            if shutil.which("openssl"):
                t0 = time.perf_counter()
                subprocess.run(["openssl", "dgst", "-sha256", str(path)], capture_output=True, check=True)
                openssl_seconds = time.perf_counter() - t0
            ours.remove(fid)
            from bench.runner import sync_disks

            flush = sync_disks()
            row = {
                "mbps": result.mbps,
                "api_rss_before_mib": rss_before,
                "api_peak_rss_mib": api_peak,
                "worker_peak_rss_mib": worker_peak,
                "to_complete_s": to_complete,
                "sha256sum_s": sha_seconds,
                "openssl_sha256_s": openssl_seconds,
                "foreign_before": before,
                "foreign_cores": meter.foreign_cores,
                "flush_seconds": flush,
            }
            runs.append(row)
            self.log(
                f"  {self.fs} {p.big_size // MiB} MiB trial {trial + 1}/{p.big_trials}: {result.mbps:.0f} MB/s,"
                f" API peak {api_peak:.0f} MiB (before {rss_before:.0f}), worker peak {worker_peak:.0f} MiB,"
                f" last chunk -> complete {to_complete:.2f} s, sha256sum {sha_seconds:.2f} s,"
                f" openssl {openssl_seconds:.2f} s"
            )
        return {"ours": {k: [r[k] for r in runs] for k in runs[0]}}

    def concurrent(self) -> dict:
        """N uploads at once, one connection each: total MB/s, chunk latency, peak RSS."""
        p, ours = self.plan, self.ours
        api = ours.api.pid
        state: dict = {}

        def run() -> dict:
            ids = state["ids"] = [new_id("c") for _ in range(p.concurrent_files)]
            state["workers"] = workers = ours.worker_pids()
            for pid in [api, *workers]:
                reset_peak(pid)
            result = upload_many(
                ours.url, OursTarget(ours.token), ids, p.concurrent_size, p.concurrent_chunk, self.payload
            )
            state["end"] = time.perf_counter()
            lat = result.latencies
            return {
                "mbps": result.mbps,
                "seconds": result.seconds,
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
                "max_ms": max(lat) * 1000,
                "api_peak_rss_mib": peak_rss_mib(api),
            }

        def after(metrics: dict) -> None:
            for fid in state["ids"]:
                ours.wait_complete(fid, interval=0.02)
            metrics["all_complete_after_s"] = time.perf_counter() - state["end"]
            metrics["worker_peak_rss_mib"] = max(peak_rss_mib(pid) for pid in state["workers"])
            for fid in state["ids"]:
                ours.remove(fid)

        contender = Contender("ours", run, lambda: [api, *ours.worker_pids(), ours.redis.pid], after)
        return self.interleave([contender], p.concurrent_trials, f"{p.concurrent_files} concurrent")
