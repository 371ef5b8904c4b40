"""Several API nodes behind nginx (README "Several API nodes"): three `python -m api` processes on
their own loopback addresses, two Celery workers and beat, one Redis and one data directory,
and a real nginx running deploy/nginx-balancer.conf. Chunks of one upload are spread over all
nodes; an API node is killed mid-chunk and a worker mid-assembly; every file ends byte-identical."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from tusclient import client as tus_client

from client import Client
from core.users import UserStore
from ops.redis_server import free_port, start_redis
from tests.support import (
    Proc,
    balancer_nginx_conf,
    bearer,
    chunk_body,
    login,
    require_tool,
    running_nginx,
    service_env,
    start_api,
    start_worker,
    wait_until,
    workers_command,
)
from tests.tus_support import upload_id

pytestmark = pytest.mark.slow
MiB = 1024 * 1024
NODE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # Linux routes all of 127.0.0.0/8 to lo
LOGIN_LIMIT = 6  # failed logins per client address (the test's clients only fail on purpose)
NODE_ENV = {
    "FT_CLAIM_LEASE": "2",  # a chunk claim held by a killed node lapses quickly
    "FT_ASSEMBLY_LEASE": "2",  # so does the assembly lease of a killed worker
    "FT_PERSIST_INTERVAL": "1",  # beat's persist sweep re-enqueues the orphaned assembly
    "FT_TRUSTED_PROXIES": "127.0.0.1",  # nginx reaches the nodes from 127.0.0.1
    "FT_LOGIN_MAX_FAILURES_PER_ADDRESS": str(LOGIN_LIMIT),
}


@dataclass
class Cluster:
    url: str  # the balancer
    data_dir: Path
    nodes: dict[str, Proc]  # "127.0.0.2:PORT" -> its API process
    workers: list[Proc]
    access_log: Path
    user: tuple[str, str]

    def requests_by_node(self, pattern: str, since: int = 0, until: int | None = None) -> Counter:
        """How many requests matching `pattern` (method and path) each node answered, from the
        balancer's access log ($upstream_addr), lines since..until."""
        counts: Counter = Counter()
        for line in self.access_log.read_text().splitlines()[since:until]:
            match = re.search(r'"(\S+ \S+) HTTP/[\d.]+" (\d+) \d+ upstream=(\S+)', line)
            if match and re.search(pattern, match.group(1)):
                counts[match.group(3).split(",")[-1].strip()] += 1
        return counts

    def token(self) -> str:
        return login(self.url, *self.user)


@pytest.fixture
def cluster(tmp_path):
    require_tool("nginx")
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    log_dir.mkdir()
    with ExitStack() as owned:
        redis_port = free_port()
        redis_proc = start_redis(redis_port, tmp_path / "redis", persistent=False)
        owned.callback(lambda: (redis_proc.terminate(), redis_proc.wait(10)))
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        workers = []
        for name in ("w1", "w2"):
            workers.append(start_worker(data_dir, redis_url, log_dir, name, **NODE_ENV))
            owned.callback(workers[-1].stop)
        beat = Proc(
            workers_command("beat", f"--schedule={tmp_path / 'beat-schedule'}"),
            service_env(data_dir, redis_url, **NODE_ENV),
            log_dir / "beat.log",
        ).start()
        owned.callback(beat.stop)
        node_port = free_port()
        nodes = {}
        for host in NODE_HOSTS:
            proc, _ = start_api(data_dir, redis_url, log_dir, host=host, port=node_port, **NODE_ENV)
            owned.callback(proc.stop)
            nodes[f"{host}:{node_port}"] = proc
        users = UserStore(data_dir / "users.sqlite3")
        user = ("node-user", "correct horse battery")
        users.set(*user, "user")
        listen_port = free_port()
        access_log = tmp_path / "balancer-access.log"
        conf = balancer_nginx_conf(listen_port, list(nodes), access_log)
        url = owned.enter_context(running_nginx(tmp_path / "nginx", conf, listen_port, "/health"))
        wait_until(
            lambda: httpx.get(f"{url}/health", timeout=2).json().get("workers", 0) >= 2,
            timeout=60,
            what="both workers' heartbeats",
        )
        yield Cluster(url, data_dir, nodes, workers, access_log, user)


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path` in pieces; returns their SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for offset in range(0, size, 8 * MiB):
            piece = os.urandom(min(8 * MiB, size - offset))
            digest.update(piece)
            out.write(piece)
    return digest.hexdigest()


def stored_sha256(cluster: Cluster, file_id: str) -> str:
    digest = hashlib.sha256()
    with open(cluster.data_dir / "files" / file_id / "data", "rb") as stored:
        while piece := stored.read(8 * MiB):
            digest.update(piece)
    return digest.hexdigest()


def process_with_open(procs: list[Proc], file_id: str) -> Proc | None:
    """The process (or a child of it) that has a file of upload `file_id` open, if any."""
    for proc in procs:
        if not proc.alive():
            continue
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            if any(f"/{file_id}/" in f.path for p in family for f in p.open_files()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def test_uploads_spread_over_nodes_survive_a_node_and_a_worker_killed(cluster, tmp_path, request):
    # 1. One client's chunks go round robin over the three nodes; a worker dies mid-assembly.
    big = tmp_path / "big.bin"
    big_sha = random_file(big, 256 * MiB)
    uploader = Client(cluster.url, *cluster.user, cache_dir=tmp_path / "client-a", retries=20)
    big_id = uploader.upload_id(big)
    with ThreadPoolExecutor(1) as pool:
        upload = pool.submit(uploader.upload, big, chunk_size=8 * MiB, parallel=4, wait_timeout=240)
        assembling = wait_until(
            lambda: upload.done() or process_with_open(cluster.workers, big_id),
            timeout=240,
            interval=0.02,
            what="a worker assembling the big file",
        )
        assert isinstance(assembling, Proc), "the upload ended before a worker was seen assembling it"
        assembling.kill(signal.SIGKILL)  # the worker's whole process group, mid-assembly
        result = upload.result(timeout=300)
    uploader.close()
    assert not assembling.alive()
    assert result.sha256 == big_sha == stored_sha256(cluster, big_id)
    served = cluster.requests_by_node(rf"^POST /upload/{big_id}$")
    assert set(served) == set(cluster.nodes), served  # every node stored chunks of it
    assert sum(served.values()) >= 32

    # The worker that was assembling died; beat's persist sweep re-enqueued the assembly once its
    # lease lapsed, and the other worker completed it.
    survivor = next(w for w in cluster.workers if w is not assembling)
    assert re.search(rf"requeued': \[[^]]*'{re.escape(big_id)}'", survivor.log() + assembling.log())
    assert re.search(
        rf"uploads\.assemble\[.*succeeded.*'file_id': '{re.escape(big_id)}', 'result': 'complete'", survivor.log()
    )

    # 2. An API node dies mid-chunk; a chunk client and a tus client both finish through the others.
    token = cluster.token()
    tus_path = tmp_path / "tus.bin"
    tus_sha = random_file(tus_path, 12 * MiB)
    # tuspy leaks a file it opens itself: this one is closed at teardown.
    tus_stream = open(tus_path, "rb")  # noqa: SIM115
    request.addfinalizer(tus_stream.close)
    tus_uploader = tus_client.TusClient(f"{cluster.url}/files/", headers=bearer(token)).uploader(
        file_stream=tus_stream, chunk_size=MiB, retries=20, retry_delay=0.5
    )
    for _ in range(4):  # a few PATCHes before the kill, round robin over all three nodes
        tus_uploader.upload_chunk()
    tus_id = upload_id(tus_uploader.url)

    cut = tmp_path / "cut.bin"
    cut_sha = random_file(cut, 24 * MiB)
    resumer = Client(cluster.url, *cluster.user, cache_dir=tmp_path / "client-b", retries=20)
    cut_id = resumer.upload_id(cut)
    half_sent, release = threading.Event(), threading.Event()

    def half_then_wait():
        with open(cut, "rb") as source:
            body = chunk_body(source.read(8 * MiB), 0)
        yield body[: 4 * MiB]
        half_sent.set()
        release.wait(60)
        yield body[4 * MiB :]

    def cut_chunk():
        headers = {
            **bearer(token),
            "Content-Range": f"bytes 0-{8 * MiB - 1}/{24 * MiB}",
            "Content-Type": "application/octet-stream",
        }
        try:
            return httpx.post(f"{cluster.url}/upload/{cut_id}", content=half_then_wait(), headers=headers, timeout=60)
        except httpx.TransportError as exc:
            return exc

    with ThreadPoolExecutor(1) as pool:
        cut_future = pool.submit(cut_chunk)
        wait_until(half_sent.is_set, timeout=30, what="half of the chunk sent")
        victim = wait_until(
            lambda: process_with_open(list(cluster.nodes.values()), cut_id),
            timeout=30,
            interval=0.02,
            what="the node receiving the chunk to open its staging file",
        )
        victim.kill(signal.SIGKILL)
        victim.popen.wait(10)
        release.set()
        answer = cut_future.result(timeout=60)
    # nginx does not replay the POST on another node; the client hears of it (JSON 503 or a cut).
    if isinstance(answer, httpx.Response):
        assert answer.status_code == 503 and answer.json()["code"] == "unavailable", answer.text
        assert answer.headers["retry-after"] == "1"
    kill_line = len(cluster.access_log.read_text().splitlines())
    # The client retries through the other nodes; the dead node's claim lapses (FT_CLAIM_LEASE).
    resumed = resumer.upload(cut, chunk_size=8 * MiB, parallel=3, wait_timeout=120)
    resumer.close()
    tus_uploader.upload()
    assert resumed.sha256 == cut_sha == stored_sha256(cluster, cut_id)
    with httpx.Client(timeout=60) as c:
        tus_status = wait_until(
            lambda: (
                (s := c.get(f"{cluster.url}/status/{tus_id}", headers=bearer(token)).json())["state"]
                in ("complete", "failed")
                and s
            ),
            timeout=120,
            what="the tus upload",
        )
    assert tus_status["state"] == "complete" and tus_status["sha256"] == tus_sha == stored_sha256(cluster, tus_id)

    dead = next(address for address, proc in cluster.nodes.items() if proc is victim)
    live = set(cluster.nodes) - {dead}
    patches_before = cluster.requests_by_node(rf"^PATCH /files/{tus_id}$", until=kill_line)
    patches_after = cluster.requests_by_node(rf"^PATCH /files/{tus_id}$", since=kill_line)
    assert set(patches_before) == set(cluster.nodes), patches_before
    assert set(patches_after) == live and sum(patches_after.values()) == 8, patches_after
    assert live <= set(cluster.requests_by_node(rf"^POST /upload/{cut_id}$", since=kill_line))
    assert all(proc.alive() for proc in cluster.nodes.values() if proc is not victim)


def test_nodes_count_the_client_address_nginx_forwards(cluster):
    """FT_TRUSTED_PROXIES is the balancer: every node believes its X-Forwarded-For, so failed
    logins are counted per real client address, across all nodes (the counts are in Redis)."""

    def from_address(address: str) -> httpx.Client:
        return httpx.Client(base_url=cluster.url, timeout=30, transport=httpx.HTTPTransport(local_address=address))

    def fail_login(c: httpx.Client, headers: dict[str, str] | None = None) -> int:
        return c.post(
            "/token", json={"username": f"nobody-{os.urandom(4).hex()}", "password": "wrong"}, headers=headers
        ).status_code

    with from_address("127.0.0.9") as guesser, from_address("127.0.0.10") as bystander:
        assert [fail_login(guesser) for _ in range(LOGIN_LIMIT)] == [401] * LOGIN_LIMIT
        assert fail_login(guesser) == 429  # the failures went to three nodes and were counted as one
        assert fail_login(guesser, {"X-Forwarded-For": "127.0.0.77"}) == 429  # writing the header does not help
        # Another address, though the same balancer connects to the nodes for both.
        assert fail_login(bystander) == 401
        answer = bystander.post("/token", json=dict(zip(("username", "password"), cluster.user, strict=True)))
        assert answer.status_code == 200, answer.text
    logins = cluster.requests_by_node(r"^POST /token$")
    assert set(logins) == set(cluster.nodes), logins


def test_the_balancer_refuses_an_oversized_chunk_in_the_api_error_shape(cluster):
    """A body over client_max_body_size (FT_MAX_CHUNK_BYTES + header) stops at nginx, as JSON."""
    token = cluster.token()
    answer = httpx.post(
        f"{cluster.url}/upload/too-big",
        content=bytes(66 * MiB),
        timeout=60,
        headers={
            **bearer(token),
            "Content-Range": f"bytes 0-{66 * MiB - 13}/{66 * MiB}",
            "Content-Type": "application/octet-stream",
        },
    )
    assert answer.status_code == 413 and answer.json()["code"] == "chunk_too_large", answer.text
    # nginx logs it once it has discarded the body, which may be after answering.
    logged = wait_until(lambda: cluster.requests_by_node(r"^POST /upload/too-big$"), what="the access log line")
    assert set(logged) == {"-"}, logged  # no node saw it
