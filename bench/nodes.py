"""1 vs 2 vs 3 API nodes behind nginx (deploy/nginx-balancer.conf), as in README "Several API nodes".

    .venv/bin/python -m bench.nodes [--nodes 1,2,3] [--clients 16] [--file-mib 8] [--chunk-kib 512]
                                    [--dir /tmp]

For each node count: one redis-server, one Celery worker, N `python -m api` processes on
127.0.0.2.. (one port), nginx in front. `--clients` uploads run at once, each on its own keep-alive
connection to nginx, each sending one file in chunks, one chunk at a time. Reported per run:
throughput (payload bytes acknowledged / wall time from the first chunk to the last answer),
chunk latency p50/p99, CPU seconds of each API node, of nginx, of the worker and of the benchmark
process itself (the clients), and how busy the whole machine was. All files must then reach
`complete` (not timed: assembly is the worker's, not the nodes').
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.procs import machine_busy_seconds, self_cpu_seconds, tree_cpu_seconds  # noqa: E402
from core.users import UserStore  # noqa: E402
from ops.redis_server import free_port, start_redis  # noqa: E402
from tests.support import (  # noqa: E402
    balancer_nginx_conf,
    bearer,
    chunk_body,
    login,
    running_nginx,
    start_api,
    start_worker,
    wait_until,
)

MiB, KiB = 1024 * 1024, 1024
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
USER = ("bench-nodes", "bench-password-0123456789")


@dataclass
class Run:
    nodes: int
    seconds: float
    payload_bytes: int
    latencies: list[float]
    node_cpu: list[float]
    nginx_cpu: float
    worker_cpu: float
    client_cpu: float
    machine_busy: float

    @property
    def mib_per_s(self) -> float:
        return self.payload_bytes / MiB / self.seconds


async def upload_one(
    client: httpx.AsyncClient, token: str, file_id: str, bodies: list[tuple[str, bytes]], latencies: list[float]
) -> None:
    for content_range, body in bodies:
        sent = time.perf_counter()
        answer = await client.post(
            f"/upload/{file_id}",
            content=body,
            headers={**bearer(token), "Content-Range": content_range, "Content-Type": "application/octet-stream"},
        )
        latencies.append(time.perf_counter() - sent)
        if answer.status_code != 200:
            raise RuntimeError(f"{file_id}: {answer.status_code} {answer.text}")


async def upload_all(url: str, token: str, clients: int, bodies: list[tuple[str, bytes]], run: str) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    connections = [httpx.AsyncClient(base_url=url, timeout=300, limits=limits) for _ in range(clients)]
    try:
        await asyncio.gather(
            *(upload_one(c, token, f"{run}-{i}", bodies, latencies) for i, c in enumerate(connections))
        )
    finally:
        for c in connections:
            await c.aclose()
    return latencies


def chunk_bodies(file_bytes: int, chunk_bytes: int) -> list[tuple[str, bytes]]:
    """(Content-Range, wire body) of every chunk of one random file (the same file for every
    client: each uploads it under its own id)."""
    data = os.urandom(file_bytes)
    return [
        (
            f"bytes {start}-{min(start + chunk_bytes, file_bytes) - 1}/{file_bytes}",
            chunk_body(data[start : start + chunk_bytes], start),
        )
        for start in range(0, file_bytes, chunk_bytes)
    ]


def measure(root: Path, nodes: int, clients: int, bodies: list[tuple[str, bytes]], file_bytes: int) -> Run:
    data_dir, log_dir = root / "data", root / "logs"
    log_dir.mkdir(parents=True)
    with ExitStack() as owned:
        redis_port = free_port()
        redis_proc = start_redis(redis_port, root / "redis", persistent=False)
        owned.callback(lambda: (redis_proc.terminate(), redis_proc.wait(10)))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        worker = start_worker(data_dir, redis_url, log_dir)
        owned.callback(worker.stop)
        node_port, api_procs = free_port(), []
        env = {"FT_TRUSTED_PROXIES": "127.0.0.1"}
        for host in HOSTS[:nodes]:
            proc, _ = start_api(data_dir, redis_url, log_dir, host=host, port=node_port, **env)
            owned.callback(proc.stop)
            api_procs.append(proc)
        UserStore(data_dir / "users.sqlite3").set(*USER, "user")
        port = free_port()
        conf = balancer_nginx_conf(port, [f"{h}:{node_port}" for h in HOSTS[:nodes]], root / "access.log")
        url = owned.enter_context(running_nginx(root / "nginx", conf, port, "/health"))
        nginx_pid = int((root / "nginx" / "nginx.pid").read_text())
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=2).json().get("workers", 0) >= 1,
            timeout=60,
            what="a worker heartbeat",
        )
        token = login(url, *USER)

        watched = [p.pid for p in api_procs] + [nginx_pid, worker.pid]
        cpu_before = [tree_cpu_seconds([pid]) for pid in watched]
        busy_before, self_before, started = machine_busy_seconds(), self_cpu_seconds(), time.perf_counter()
        latencies = asyncio.run(upload_all(url, token, clients, bodies, f"n{nodes}"))
        seconds = time.perf_counter() - started
        busy, client_cpu = machine_busy_seconds() - busy_before, self_cpu_seconds() - self_before
        cpu = [tree_cpu_seconds([pid]) - before for pid, before in zip(watched, cpu_before, strict=True)]

        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as c:

            def all_complete() -> bool:
                states = {c.get(f"/status/n{nodes}-{i}").json()["state"] for i in range(clients)}
                if "failed" in states:
                    raise RuntimeError("an upload failed")
                return states == {"complete"}

            wait_until(all_complete, timeout=600, interval=0.5, what="every upload complete")
        return Run(
            nodes, seconds, clients * file_bytes, latencies, cpu[:nodes], cpu[nodes], cpu[nodes + 1], client_cpu, busy
        )


def report(runs: list[Run], clients: int, file_bytes: int, chunk_bytes: int) -> str:
    lines = [
        f"{clients} clients at once, each one {file_bytes // MiB} MiB file in {chunk_bytes // KiB} KiB chunks "
        f"through nginx; {os.cpu_count()} CPUs on the machine",
        "",
        "| API nodes | wall s | MiB/s | vs 1 node | chunk p50 / p99 ms | CPU s per node | nginx CPU s "
        "| worker CPU s | clients CPU s | machine busy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = runs[0].mib_per_s
    for r in runs:
        q = statistics.quantiles(r.latencies, n=100)
        per_node = " / ".join(f"{c:.2f}" for c in r.node_cpu)
        capacity = r.seconds * (os.cpu_count() or 1)
        lines.append(
            f"| {r.nodes} | {r.seconds:.1f} | {r.mib_per_s:.0f} | {r.mib_per_s / base:.2f}x | "
            f"{q[49] * 1000:.0f} / {q[98] * 1000:.0f} | {per_node} | {r.nginx_cpu:.2f} | {r.worker_cpu:.2f} | "
            f"{r.client_cpu:.2f} | {100 * r.machine_busy / capacity:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,3", help="node counts to compare (at most 3)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--file-mib", type=int, default=8, help="size of each client's file")
    parser.add_argument("--chunk-kib", type=int, default=512)
    parser.add_argument("--dir", default=None, help="where data directories go (default: the temp dir)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.nodes.split(",")]
    if not all(1 <= n <= len(HOSTS) for n in counts):
        parser.error(f"--nodes: each count from 1 to {len(HOSTS)}")
    file_bytes, chunk_bytes = args.file_mib * MiB, args.chunk_kib * KiB
    bodies = chunk_bodies(file_bytes, chunk_bytes)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-nodes-", dir=args.dir) as tmp:
        for n in counts:
            runs.append(measure(Path(tmp) / f"nodes{n}", n, args.clients, bodies, file_bytes))
            print(f"{n} node(s): {runs[-1].mib_per_s:.0f} MiB/s", file=sys.stderr, flush=True)
    print(report(runs, args.clients, file_bytes, chunk_bytes))


if __name__ == "__main__":
    main()
