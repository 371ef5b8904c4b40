"""Login attacks against a real stack (issue 16): how many parallel wrong passwords get checked,
the API's peak memory, and how /health and a 1 MiB chunk fare during a flood of logins.

    .venv/bin/python -m bench.login_flood [--seconds 20] [--threads 50] [--env FT_X=value ...]

Prints one JSON object. The flood uses unknown user names and a per-address limit too high to
matter, as an attack from many addresses would look.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.procs import peak_rss_mib, reset_peak
from bench.stack import OurStack
from tests.support import bearer, chunk_body


def parallel_wrong_logins(stack: OurStack, name: str, parallel: int) -> dict:
    def one(_: int) -> int:
        with httpx.Client(timeout=300) as client:
            return client.post(f"{stack.url}/token", json={"username": name, "password": "wrong"}).status_code

    reset_peak(stack.api.pid)
    with ThreadPoolExecutor(parallel) as pool:
        answers = Counter(pool.map(one, range(parallel)))
    return {
        "parallel": parallel,
        "checked_401": answers[401],
        "refused_429": answers[429],
        "other": sum(n for code, n in answers.items() if code not in (401, 429)),
        "api_peak_rss_MiB": round(peak_rss_mib(stack.api.pid), 1),
    }


def latencies(stack: OurStack, seconds: float) -> dict:
    """/health and 1 MiB chunk round trips, one after the other, for `seconds`."""
    health, chunks = [], []
    payload = os.urandom(1024 * 1024)
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=300) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            client.get(f"{stack.url}/health")
            health.append(time.perf_counter() - start)
            file_id = f"flood-{len(chunks)}-{time.monotonic_ns()}"
            start = time.perf_counter()
            response = client.post(
                f"{stack.url}/upload/{file_id}",
                content=chunk_body(payload, 0),
                headers={
                    **bearer(stack.token),
                    "Content-Range": f"bytes 0-{len(payload) - 1}/{len(payload) * 2}",
                    "Content-Type": "application/octet-stream",
                },
            )
            chunks.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text

    def summary(values: list[float]) -> dict:
        return {
            "n": len(values),
            "median_ms": round(statistics.median(values) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1),
        }

    return {"health": summary(health), "chunk_1MiB": summary(chunks)}


def flood(stack: OurStack, seconds: float, threads: int) -> dict:
    stop = threading.Event()
    answers: Counter = Counter()

    def attacker(index: int) -> None:
        with httpx.Client(timeout=300) as client:
            n = 0
            while not stop.is_set():
                n += 1
                code = client.post(
                    f"{stack.url}/token", json={"username": f"ghost-{index}-{n}", "password": "x"}
                ).status_code
                answers[code] += 1

    reset_peak(stack.api.pid)
    workers = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    try:
        during = latencies(stack, seconds)
    finally:
        stop.set()
        for worker in workers:
            worker.join(300)
    return {
        "seconds": seconds,
        "threads": threads,
        "answers": dict(answers),
        "api_peak_rss_MiB": round(peak_rss_mib(stack.api.pid), 1),
        **during,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--env", action="append", default=[], metavar="FT_X=value", help="setting for the stack")
    args = parser.parse_args()
    env = {"FT_LOGIN_MAX_FAILURES_PER_ADDRESS": "1000000", **dict(item.split("=", 1) for item in args.env)}
    with tempfile.TemporaryDirectory(prefix="ft-login-flood-") as root, OurStack(Path(root), **env) as stack:
        report = {"idle": latencies(stack, 5)}
        for parallel in (24, 100):
            report[f"wrong_logins_{parallel}"] = parallel_wrong_logins(stack, f"victim-{parallel}", parallel)
        report["flood"] = flood(stack, args.seconds, args.threads)
    print(json.dumps({"env": env, **report}, indent=2))


if __name__ == "__main__":
    main()
