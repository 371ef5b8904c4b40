"""Download figures: our GET /download/{id} against nginx serving the very same file statically.

The file is uploaded through the API first, so both servers read the same bytes from the same
filesystem, from the page cache (the file was just written and verified): these figures measure
the servers' CPU cost per byte, not the disk. Two clients: the Python loop of bench/client.py
(`readinto` a reused 1 MiB buffer) and curl (body to /dev/null, its own timer), as in
bench/download_probe.py.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.client import MiB, Http, OursTarget, Payload, upload
from bench.plan import Plan
from bench.refs import Nginx
from bench.runner import Contender, run_interleaved
from bench.stack import OurStack
from bench.upload import new_id


class DownloadBench:
    def __init__(self, plan: Plan, base_dir: str, payload: Payload, log) -> None:
        self.plan, self.payload, self.log = plan, payload, log
        self.root = Path(tempfile.mkdtemp(prefix="ft-bench-dl-", dir=base_dir))

    def __enter__(self) -> "DownloadBench":
        self.exits = contextlib.ExitStack()
        try:
            self.ours = self.exits.enter_context(OurStack(self.root / "ours"))
            self.nginx = self.exits.enter_context(Nginx(self.root / "nginx", static_root=self.ours.data_dir / "files"))
        except BaseException:
            self.exits.close()
            raise
        self.size = self.plan.download_size
        self.repeat = self.plan.download_repeat
        self.file_id = new_id("dl")
        upload(self.ours.url, OursTarget(self.ours.token), self.file_id, self.size, self.plan.chunk, self.payload)
        self.ours.wait_complete(self.file_id)
        self.auth = {"Authorization": f"Bearer {self.ours.token}"}
        self.targets = {
            "ours": (self.ours.url, f"/download/{self.file_id}", self.auth, lambda: [self.ours.api.pid]),
            "nginx": (self.nginx.url, f"/static/{self.file_id}/data", {}, lambda: self.nginx.pids),
        }
        for name in self.targets:  # warm-up
            self.full_python(name)
        return self

    def __exit__(self, *exc) -> None:
        self.exits.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def all_pids(self) -> list[int]:
        return self.ours.pids + self.nginx.pids

    # --- one download each ---------------------------------------------------------------
    def full_python(self, name: str) -> dict:
        """`repeat` GETs of the whole file, one after the other on one keep-alive connection."""
        base, path, headers, _ = self.targets[name]
        http = Http(base)
        http.conn.connect()
        buffer = memoryview(bytearray(MiB))
        t0 = time.perf_counter()
        for _ in range(self.repeat):
            status, got = http.download(path, headers, buffer)
            if status != 200 or got != self.size:
                raise RuntimeError(f"{name}: GET answered {status} with {got} of {self.size} bytes")
        seconds = time.perf_counter() - t0
        http.close()
        return {"mbps": self.size * self.repeat / seconds / 1e6, "seconds": seconds}

    def full_curl(self, name: str) -> dict:
        """One curl fetching the file `repeat` times (one connection); timed by curl, transfers only."""
        base, path, headers, _ = self.targets[name]
        args = ["curl", "-s", "-w", "%{http_code} %{size_download} %{time_total}\\n"]
        for key, value in headers.items():
            args += ["-H", f"{key}: {value}"]
        for _ in range(self.repeat):
            args += ["-o", "/dev/null", base + path]
        t0 = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout.split("\n")
        wall = time.perf_counter() - t0
        rows = [line.split() for line in out if line.strip()]
        if len(rows) != self.repeat or any(r[0] != "200" or int(r[1]) != self.size for r in rows):
            raise RuntimeError(f"{name}: curl got {rows}")
        seconds = sum(float(r[2]) for r in rows)
        return {"mbps": self.size * self.repeat / seconds / 1e6, "seconds": seconds, "wall_seconds": wall}

    def ranges_python(self, name: str, parts: int = 8) -> dict:
        base, path, headers, _ = self.targets[name]
        step = -(-self.size // parts)
        spans = [(s, min(s + step, self.size) - 1) for s in range(0, self.size, step)]
        https = [Http(base) for _ in spans]
        for h in https:
            h.conn.connect()
        errors: list[str] = []
        barrier = threading.Barrier(len(spans) + 1)

        def fetch(h: Http, span: tuple[int, int]) -> None:
            buffer = memoryview(bytearray(MiB))
            barrier.wait()
            for _ in range(self.repeat):
                status, got = h.download(path, {**headers, "Range": f"bytes={span[0]}-{span[1]}"}, buffer)
                if status != 206 or got != span[1] - span[0] + 1:
                    errors.append(f"{span}: {status} {got}")

        threads = [threading.Thread(target=fetch, args=(h, s)) for h, s in zip(https, spans)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        for h in https:
            h.close()
        if errors:
            raise RuntimeError(f"{name}: ranges failed: {errors[:3]}")
        return {"mbps": self.size * self.repeat / seconds / 1e6, "seconds": seconds}

    # --- tables --------------------------------------------------------------------------
    def table(self, label: str, fn) -> dict:
        contenders = [Contender(name, (lambda n=name: fn(n)), self.targets[name][3]) for name in self.targets]
        series = run_interleaved(contenders, self.plan.download_trials, self.all_pids, self.log, f"download {label}")
        return {name: s.values for name, s in series.items()}

    def run(self, have_curl: bool) -> dict:
        result = {"full (python client)": self.table("full/python", self.full_python)}
        if have_curl:
            result["full (curl)"] = self.table("full/curl", self.full_curl)
        result["8 ranges (python client)"] = self.table("8 ranges", self.ranges_python)
        return result
