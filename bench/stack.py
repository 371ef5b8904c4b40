"""Our service, started for the benchmark: own redis-server, the API (uvicorn), one Celery worker."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from ops.redis_server import free_port, start_redis
from tests.support import bearer, login, start_api, start_worker, wait_until

ADMIN, PASSWORD = "bench", "bench-password-0123456789"


class OurStack:
    """API + worker + redis on `root` (a fresh directory on the filesystem under test)."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.env = env

    def __enter__(self) -> OurStack:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(exist_ok=True)
        port = free_port()
        self.redis = start_redis(port, self.root / "redis", persistent=False)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        env = {"FT_ADMIN_USERNAME": ADMIN, "FT_ADMIN_PASSWORD": PASSWORD, **self.env}
        self.worker = start_worker(self.data_dir, self.redis_url, self.log_dir, **env)
        try:
            self.api, self.url = start_api(self.data_dir, self.redis_url, self.log_dir, **env)
            wait_until(
                lambda: httpx.get(f"{self.url}/health", timeout=2).json().get("workers", 0) >= 1,
                timeout=60,
                what="a worker heartbeat",
            )
            self.token = login(self.url, ADMIN, PASSWORD)
        except BaseException:
            self.__exit__()
            raise
        self.client = httpx.Client(base_url=self.url, headers=bearer(self.token), timeout=120)
        return self

    def __exit__(self, *exc) -> None:
        for proc in (getattr(self, "api", None), getattr(self, "worker", None)):
            if proc is not None:
                proc.stop()
        if getattr(self, "redis", None) is not None:
            self.redis.terminate()
            self.redis.wait(10)
        if hasattr(self, "client"):
            self.client.close()

    @property
    def pids(self) -> list[int]:
        return [self.api.pid, self.worker.pid, self.redis.pid]

    def worker_pids(self) -> list[int]:
        from bench.procs import descendants

        return descendants(self.worker.pid)

    def status(self, file_id: str) -> dict:
        return self.client.get(f"/status/{file_id}").json()

    def wait_complete(self, file_id: str, timeout: float = 600.0, interval: float = 0.005) -> tuple[dict, float]:
        """Poll until `file_id` is complete; returns the status and the monotonic time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(file_id)
            if status.get("state") == "complete":
                return status, time.perf_counter()
            if status.get("state") == "failed":
                raise RuntimeError(f"{file_id} failed: {status}")
            time.sleep(interval)
        raise TimeoutError(f"{file_id} not complete after {timeout}s")

    def final_path(self, file_id: str) -> Path:
        return self.data_dir / "files" / file_id / "data"

    def remove(self, file_id: str) -> None:
        """Drop a finished file's bytes (Redis keeps its small record) so the disk stays empty."""
        shutil.rmtree(self.data_dir / "files" / file_id, ignore_errors=True)
        shutil.rmtree(self.data_dir / "staging" / file_id, ignore_errors=True)
