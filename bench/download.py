"""Download figures: our GET /download/{id} direct, the same through nginx in accel mode, and nginx
serving the very same file statically.

The file is uploaded through the API first, so every server reads the same bytes from the same
filesystem, from the page cache (the file was just written and verified): these figures measure
the servers' CPU cost per byte, not the disk. Two clients: the Python loop of bench/client.py
(`readinto` a reused 1 MiB buffer) and curl (body to /dev/null, its own timer), as in
bench/download_probe.py.

Accel mode: a second API process on the same data dir and Redis, started with
FT_ACCEL_REDIRECT=1, behind deploy/nginx.conf (bench/refs.py NginxAccel): the API authorises
and answers `X-Accel-Redirect`, nginx sends the file with sendfile. So that a fast 401/404 or a
wrong file cannot pass for a fast download, the bytes are checked: once per run, SHA-256 of a
whole download and of the 8 ranges put back together, for every server, and the accel API asked
directly must answer with an empty body and `X-Accel-Redirect`; every timed download checks its
status, its length and its first 64 KiB against the payload (curl: status and length).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.client import Http, MiB, OursTarget, Payload, upload
from bench.plan import Plan
from bench.refs import Nginx, NginxAccel
from bench.runner import Contender, run_interleaved
from bench.stack import OurStack
from bench.upload import new_id
from tests.support import start_api


class DownloadBench:
    def __init__(self, plan: Plan, base_dir: str, payload: Payload, log) -> None:
        self.plan, self.payload, self.log = plan, payload, log
        self.root = Path(tempfile.mkdtemp(prefix="ft-bench-dl-", dir=base_dir))

    def __enter__(self) -> DownloadBench:
        self.exits = contextlib.ExitStack()
        try:
            self._setup()
        except BaseException:
            self.exits.close()
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def _setup(self) -> None:
        self.ours = self.exits.enter_context(OurStack(self.root / "ours"))
        self.nginx = self.exits.enter_context(Nginx(self.root / "nginx", static_root=self.ours.data_dir / "files"))
        self.size = self.plan.download_size
        self.repeat = self.plan.download_repeat
        self.file_id = new_id("dl")
        upload(self.ours.url, OursTarget(self.ours.token), self.file_id, self.size, self.plan.chunk, self.payload)
        self.ours.wait_complete(self.file_id)
        self.auth = {"Authorization": f"Bearer {self.ours.token}"}
        self._start_accel()
        self.targets = {
            "ours": (self.ours.url, f"/download/{self.file_id}", self.auth, lambda: [self.ours.api.pid]),
            "accel": (
                self.accel.url,
                f"/download/{self.file_id}",
                self.auth,
                lambda: [*self.accel.pids, self.accel_api.pid],
            ),
            "nginx": (self.nginx.url, f"/static/{self.file_id}/data", {}, lambda: self.nginx.pids),
        }
        self.checks = self.verify()
        for name in self.targets:  # warm-up
            self.full_python(name)

    def _start_accel(self) -> None:
        """A second API (same data dir, same Redis, so the same file and token) with
        FT_ACCEL_REDIRECT=1, and deploy/nginx.conf in front of it."""
        self.accel_api, api_url = start_api(
            self.ours.data_dir, self.ours.redis_url, self.ours.log_dir, FT_ACCEL_REDIRECT="1"
        )
        self.exits.callback(self.accel_api.stop)
        self.accel = self.exits.enter_context(
            NginxAccel(self.root / "nginx-accel", int(api_url.rsplit(":", 1)[1]), self.ours.data_dir)
        )
        self.accel_api_url = api_url

    def verify(self) -> dict:
        """Untimed, once per run: every server's bytes are the file's (SHA-256 of a whole GET and of
        the 8 ranges in order), and the accel API hands the bytes to nginx rather than sending them."""
        expected = hashlib.sha256(self.payload.piece(0, self.size)).hexdigest()
        direct = httpx.get(f"{self.accel_api_url}/download/{self.file_id}", headers=self.auth, timeout=30)
        redirect = direct.headers.get("x-accel-redirect")
        if direct.status_code != 200 or redirect != f"/_ft_files/{self.file_id}/data" or direct.content:
            raise RuntimeError(
                f"the accel API answered {direct.status_code}, X-Accel-Redirect {redirect!r},"
                f" {len(direct.content)} body bytes: accel mode is not on"
            )
        checks = {"sha256": expected, "accel_redirect": redirect}
        buffer = memoryview(bytearray(MiB))
        for name, (base, path, headers, _) in self.targets.items():
            http = Http(base)
            for label, spans in (("whole", [None]), ("8 ranges", self.spans(8))):
                digest, total = hashlib.sha256(), 0
                for span in spans:
                    extra = {} if span is None else {"Range": f"bytes={span[0]}-{span[1]}"}
                    http.conn.putrequest("GET", path, skip_accept_encoding=True)
                    for key, value in {**headers, **extra}.items():
                        http.conn.putheader(key, value)
                    http.conn.endheaders()
                    response = http.conn.getresponse()
                    if response.status != (200 if span is None else 206):
                        raise RuntimeError(f"{name} {label}: GET answered {response.status}")
                    while n := response.readinto(buffer):
                        digest.update(buffer[:n])
                        total += n
                if total != self.size or digest.hexdigest() != expected:
                    raise RuntimeError(
                        f"{name} {label}: {total} bytes with SHA-256 {digest.hexdigest()},"
                        f" expected {self.size} bytes with {expected}"
                    )
                checks[f"{name} {label}"] = "ok"
            http.close()
        self.log(
            f"  downloads verified: SHA-256 {expected[:16]}... of {self.size} bytes from"
            f" {', '.join(self.targets)} (whole and 8 ranges); the accel API answers X-Accel-Redirect"
        )
        return checks

    def spans(self, parts: int) -> list[tuple[int, int]]:
        step = -(-self.size // parts)
        return [(s, min(s + step, self.size) - 1) for s in range(0, self.size, step)]

    def __exit__(self, *exc) -> None:
        self.exits.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def all_pids(self) -> list[int]:
        return self.ours.pids + self.nginx.pids + [self.accel_api.pid] + self.accel.pids

    # --- one download each ---------------------------------------------------------------
    def full_python(self, name: str) -> dict:
        """`repeat` GETs of the whole file, one after the other on one keep-alive connection."""
        base, path, headers, _ = self.targets[name]
        http = Http(base)
        http.conn.connect()
        buffer = memoryview(bytearray(MiB))
        expect = self.payload.piece(0, self.size)
        t0 = time.perf_counter()
        for _ in range(self.repeat):
            status, got = http.download(path, headers, buffer, expect)
            if status != 200 or got != self.size:
                raise RuntimeError(
                    f"{name}: GET answered {status} with {got} of {self.size} bytes"
                    " (status -1: the body's first bytes are not the file's)"
                )
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
        spans = self.spans(parts)
        https = [Http(base) for _ in spans]
        for h in https:
            h.conn.connect()
        errors: list[str] = []
        barrier = threading.Barrier(len(spans) + 1)

        def fetch(h: Http, span: tuple[int, int]) -> None:
            buffer = memoryview(bytearray(MiB))
            expect = self.payload.piece(span[0], span[1] - span[0] + 1)
            barrier.wait()
            for _ in range(self.repeat):
                status, got = h.download(path, {**headers, "Range": f"bytes={span[0]}-{span[1]}"}, buffer, expect)
                if status != 206 or got != span[1] - span[0] + 1:
                    errors.append(f"{span}: {status} {got} (-1: wrong bytes)")

        threads = [threading.Thread(target=fetch, args=(h, s)) for h, s in zip(https, spans, strict=True)]
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
