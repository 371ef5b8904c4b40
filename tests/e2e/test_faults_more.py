"""More failures from outside, with real processes: the API SIGKILLed while a chunk streams in,
a redis-server restarted for real (it keeps nothing on disk), and a disk that runs short of
space. Each test ends with a byte-identical file (SHA-256) and nothing left stuck: no claim,
no staging directory, nothing `assembling`.

Downloads through a proxy that cuts every connection after ~1 MiB are already covered by
`tests/e2e/test_client.py::test_download_completes_through_connection_cuts` (the client resumes
with `Range` + `If-Range`), so they are not repeated here.
"""

from __future__ import annotations

import hashlib
import os
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from core.config import Settings
from core.jobs import celery_client
from core.state import ASSEMBLING_KEY, upload_key
from core.users import UserStore
from ops.redis_server import free_port, start_redis
from tests.faults import MiB, claims_key, drop, open_partial_chunk, post_chunk, stack_redis, status
from tests.support import JWT_SECRET, login, new_id, start_api, start_worker, stop_all, wait_for_state, wait_until


def report(what: str, **figures) -> None:
    """Figures for docs/RELIABILITY.md; shown with `pytest -s`."""
    print(f"\n[faults-more] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def assert_complete_and_clean(
    client, url: str, token: str, data_dir: Path, redis_url: str, file_id: str, data: bytes, timeout: float = 60
) -> dict:
    """Complete, byte-identical by SHA-256, and nothing of the upload left in flight."""
    done = wait_for_state(client, url, token, file_id, timeout=timeout)
    sha = hashlib.sha256(data).hexdigest()
    assert done["state"] == "complete", done
    assert done["sha256"] == sha
    final = data_dir / "files" / file_id / "data"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == sha
    assert done["missing_ranges"] == [] and done["received_bytes"] == len(data)
    assert not (data_dir / "staging" / file_id).exists()
    r = redis.Redis.from_url(redis_url)
    try:
        assert r.hlen(claims_key(file_id)) == 0
        assert r.zscore(ASSEMBLING_KEY, file_id) is None
    finally:
        r.close()
    return done


def progress(body: dict) -> tuple:
    return body["state"], body["received_bytes"], body["next_expected_byte"], body["missing_ranges"]


# --- 1. the API killed while a chunk streams in ------------------------------------------------


def test_api_sigkilled_mid_chunk_then_restarted(make_stack, client):
    """SIGKILL of the API while it writes a chunk: the dead chunk's claim stays in Redis until
    its lease (FT_CLAIM_LEASE=3) runs out, the range is refused (409 overlap) until then and
    accepted after it; the bytes the dead chunk wrote are overwritten; the file completes."""
    lease = 3
    stack = make_stack(FT_CLAIM_LEASE=str(lease))
    token = stack.token()
    chunk = 4 * MiB
    data = os.urandom(3 * chunk)
    file_id = new_id("apikill")
    assert post_chunk(client, stack.url, token, file_id, data[:chunk], 0, len(data)).status_code == 200
    before = status(client, stack, token, file_id).json()

    # The second chunk streams with other bytes (a valid CRC for them): whatever the dead
    # request wrote must not survive. A quarter of it is sent, then the client stalls.
    garbage = os.urandom(chunk)
    sock = open_partial_chunk(stack.url, token, file_id, garbage, chunk, len(data), 12 + chunk // 4)
    r = stack_redis(stack)
    try:
        wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the chunk's claim")
        staged = stack.data_dir / "staging" / file_id / "data"

        def dead_bytes_on_disk() -> bool:
            with open(staged, "rb") as handle:
                handle.seek(chunk)
                return handle.read(64 * 1024) == garbage[: 64 * 1024]

        wait_until(dead_bytes_on_disk, timeout=10, what="the streaming chunk's first bytes on disk")
        killed_at = time.monotonic()
        stack.api.kill()
        stack.api.popen.wait(10)
    finally:
        drop(sock, abortive=True)

    # Nobody released the claim: it is still there, with the lease the dead process last set.
    [held] = [v.decode() for v in r.hvals(claims_key(file_id))]
    assert held.startswith(f"{chunk}:{2 * chunk - 1}:")
    lease_until = float(held.rsplit(":", 1)[1])

    stack.api, stack.url = start_api(stack.data_dir, stack.redis_url, stack.log_dir, FT_CLAIM_LEASE=str(lease))
    restarted_in = time.monotonic() - killed_at
    after = status(client, stack, token, file_id).json()
    assert progress(after) == progress(before)  # the dead chunk counted for nothing

    # Retry the range, as a client would, until it is accepted (checked after the loop:
    # wait_until would take a failed assert inside it for "not yet").
    attempts: list[tuple[float, float, httpx.Response]] = []

    def resend():
        sent_at = time.time()
        resp = post_chunk(client, stack.url, token, file_id, data[chunk : 2 * chunk], chunk, len(data))
        attempts.append((sent_at, time.time(), resp))
        return resp.status_code != 409

    wait_until(resend, timeout=lease + 15, interval=0.25, what="the killed range to be accepted")
    recovered_in = time.monotonic() - killed_at
    *refusals, (_, answered_at, accepted) = attempts
    for sent_at, _, resp in refusals:
        assert resp.json()["code"] == "overlap" and resp.json()["next_expected_byte"] == chunk, resp.text
        assert sent_at <= lease_until, "refused after the dead chunk's lease was over"
    assert accepted.status_code == 200, accepted.text
    assert answered_at >= lease_until, "accepted while the dead chunk's claim was still valid"
    assert accepted.json()["received_bytes"] == 2 * chunk
    assert r.hlen(claims_key(file_id)) == 0  # the expired claim was swept by the new claim
    refused = len(refusals)
    if restarted_in < lease - 0.5:
        assert refused >= 1, attempts  # restarted well within the lease: the range was still held

    assert post_chunk(client, stack.url, token, file_id, data[2 * chunk :], 2 * chunk, len(data)).status_code == 200
    assert_complete_and_clean(client, stack.url, token, stack.data_dir, stack.redis_url, file_id, data)
    report(
        "API SIGKILL mid-chunk",
        api_restart_s=round(restarted_in, 2),
        range_accepted_after_kill_s=round(recovered_in, 2),
        refused_409=refused,
        resent_bytes=chunk,
        sent_before_kill=chunk // 4,
    )


# --- 2. redis-server restarted: everything it knew is gone ---------------------------------------


class OwnStack:
    """A redis-server of our own (no persistence) with an API and a worker on it."""

    def __init__(self, root: Path, **env: str) -> None:
        self.root = root
        self.env = env
        self.redis_dir = root / "redis"
        self.data_dir = root / "data"
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True)
        self.port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.port}/0"
        self.redis_proc = self.worker = self.api = None
        self.users = UserStore(self.data_dir / "users.sqlite3")

    def start(self) -> OwnStack:
        self.redis_proc = start_redis(self.port, self.redis_dir, persistent=False)
        self.worker = start_worker(self.data_dir, self.redis_url, self.log_dir, **self.env)
        self.api, self.url = start_api(self.data_dir, self.redis_url, self.log_dir, **self.env)
        return self

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=15)

    def stop_redis(self) -> None:
        self.redis_proc.terminate()
        self.redis_proc.wait(10)

    def start_redis(self) -> None:
        self.redis_proc = start_redis(self.port, self.redis_dir, persistent=False)

    def close(self) -> None:
        try:
            stop_all(proc for proc in (self.api, self.worker) if proc is not None)
        finally:
            if self.redis_proc is not None and self.redis_proc.poll() is None:
                self.redis_proc.terminate()
                self.redis_proc.wait(10)


@pytest.fixture
def own_stack(tmp_path):
    stacks: list[OwnStack] = []

    def make(**env: str) -> OwnStack:
        stacks.append(OwnStack(tmp_path / f"own{len(stacks)}", **env))
        return stacks[-1].start()  # registered first: a failed start still stops what did start

    yield make
    with ExitStack() as closing:
        for s in stacks:
            closing.callback(s.close)


def test_redis_restarted_for_real_with_a_persisted_idle_upload(own_stack, client):
    s = own_stack(FT_PERSIST_AFTER="0")
    wait_until(lambda: s.health().json().get("workers", 0) >= 1, timeout=60, what="a worker heartbeat")
    name, password = "alice", "correct horse battery"
    s.users.set(name, password, "user")
    token = login(s.url, name, password)

    block = 1 * MiB
    data = os.urandom(8 * block + 777)
    sha = hashlib.sha256(data).hexdigest()
    file_id = new_id("redisrestart")
    stored = [(0, block), (block, 2 * block), (5 * block, 6 * block)]
    for lo, hi in stored:
        r = post_chunk(
            client,
            s.url,
            token,
            file_id,
            data[lo:hi],
            lo,
            len(data),
            X_File_Name="r%C3%A9sum%C3%A9.bin",
            X_File_SHA256=sha,
        )
        assert r.status_code == 200, r.text

    # The persist job, as beat would run it (FT_PERSIST_AFTER=0: every upload is idle enough).
    app = celery_client(Settings(redis_url=s.redis_url, data_dir=s.data_dir, jwt_secret=JWT_SECRET))
    try:
        result = app.send_task("uploads.persist").get(timeout=30)
    finally:
        app.close()
    assert file_id in result["persisted"], result
    persisted = wait_until(
        lambda: (b := status(client, s, token, file_id).json())["persisted_at"] and b,
        timeout=10,
        what="persisted_at in the status",
    )
    assert (s.data_dir / "staging" / file_id / "manifest.json").exists()

    # Redis goes away: the API says so, without a 500.
    s.stop_redis()
    down_at = time.monotonic()
    unhealthy = s.health()
    assert unhealthy.status_code == 503 and unhealthy.json()["code"] == "unavailable", unhealthy.text
    during = status(client, s, token, file_id)
    assert during.status_code == 503 and during.json()["code"] == "unavailable", during.text
    no_login = client.post(f"{s.url}/token", json={"username": name, "password": password})
    assert no_login.status_code == 503 and no_login.json()["code"] == "unavailable", no_login.text

    s.start_redis()
    restarted_at = time.monotonic()
    probe = redis.Redis.from_url(s.redis_url)
    try:
        assert not probe.exists(upload_key(file_id))  # nothing survived in Redis
        # The worker reconnects on its own (heartbeat thread; Celery's broker connection retry).
        wait_until(
            lambda: (h := s.health()).status_code == 200 and h.json()["workers"] >= 1,
            timeout=30,
            interval=0.2,
            what="/health to be 200 with a live worker again",
        )
        healthy_after = time.monotonic() - restarted_at

        # The first request for the upload restores it from its manifest.
        restored = status(client, s, token, file_id)
        assert restored.status_code == 200, restored.text
        after = restored.json()
        for field in (
            "state",
            "total_bytes",
            "received_bytes",
            "next_expected_byte",
            "missing_ranges",
            "file_name",
            "created_at",
            "updated_at",
            "persisted_at",
        ):
            assert after[field] == persisted[field], field
        assert after["missing_ranges"] == [[2 * block, 5 * block - 1], [6 * block, len(data) - 1]]
        assert after["file_name"] == "résumé.bin"
        assert probe.exists(upload_key(file_id))
        # Logging in works again (the login throttle's counters lived in Redis too).
        token = login(s.url, name, password)

        resent = 0
        for lo, hi in after["missing_ranges"]:
            for start in range(lo, hi + 1, block):
                end = min(start + block, hi + 1)
                r = post_chunk(client, s.url, token, file_id, data[start:end], start, len(data))
                assert r.status_code == 200, r.text
                resent += end - start
        assert resent == len(data) - 3 * block  # only what the manifest said was missing
        # The worker, reconnected to the new Redis, assembles it; the remembered SHA-256 held.
        done = assert_complete_and_clean(client, s.url, token, s.data_dir, s.redis_url, file_id, data)
        assert done["sha256"] == sha
        completed_after = time.monotonic() - restarted_at
    finally:
        probe.close()
    assert s.worker.alive() and s.api.alive()
    assert "Traceback" not in s.api.log(), s.api.log()[-3000:]
    assert "DeprecationWarning" not in s.worker.log(), s.worker.log()[-3000:]  # e.g. Celery's on connection loss
    report(
        "redis restart",
        down_s=round(restarted_at - down_at, 2),
        health_200_after_s=round(healthy_after, 2),
        complete_after_restart_s=round(completed_after, 2),
        resent_bytes=resent,
        kept_bytes=3 * block,
    )


# --- 3. the disk runs short of space ----------------------------------------------------------


def test_disk_pressure_then_space_returns(make_stack, client, tmp_path):
    """FT_MIN_FREE_BYTES just under the free space measured now: chunks are accepted until
    storing the next would cross it (507, upload unchanged); with the limit lifted (API
    restarted with FT_MIN_FREE_BYTES=0) the upload resumes and completes."""
    chunk = 4 * MiB
    data = os.urandom(32 * MiB)
    stats = os.statvfs(tmp_path)  # the stack's data dir will be under tmp_path: same file system
    free = stats.f_bavail * stats.f_frsize
    threshold = free - 8 * MiB
    stack = make_stack(FT_MIN_FREE_BYTES=str(threshold))
    token = stack.token()
    file_id = new_id("diskfull")
    staged = stack.data_dir / "staging" / file_id / "data"

    accepted, refused = 0, None
    for start in range(0, len(data), chunk):
        before = status(client, stack, token, file_id)
        r = post_chunk(client, stack.url, token, file_id, data[start : start + chunk], start, len(data))
        if r.status_code == 507:
            refused = start
            break
        assert r.status_code == 200, r.text
        accepted += chunk
    assert refused is not None, (
        f"no 507 in {len(data)} bytes with FT_MIN_FREE_BYTES={threshold} (free was {free}): "
        "something else freed space on this disk meanwhile"
    )
    assert r.json()["code"] == "insufficient_storage", r.text
    # The refused chunk changed nothing: same answer as before it (404 if it was the first).
    after = status(client, stack, token, file_id)
    assert after.status_code == before.status_code
    if before.status_code == 200:
        assert (
            progress(after.json())
            == progress(before.json())
            == ("uploading", accepted, accepted, [[accepted, len(data) - 1]])
        )
        assert staged.stat().st_blocks * 512 < accepted + chunk  # none of its bytes were written
    else:
        assert before.status_code == 404 and not staged.exists()
    refused_free = os.statvfs(tmp_path)
    still_free = refused_free.f_bavail * refused_free.f_frsize

    # Space returns: the API is restarted without the limit, on the same data dir and Redis DB.
    stack.api.stop()
    stack.api, stack.url = start_api(stack.data_dir, stack.redis_url, stack.log_dir, FT_MIN_FREE_BYTES="0")
    resumed = status(client, stack, token, file_id)
    if resumed.status_code == 200:
        assert resumed.json()["next_expected_byte"] == accepted
    for start in range(refused, len(data), chunk):
        r = post_chunk(client, stack.url, token, file_id, data[start : start + chunk], start, len(data))
        assert r.status_code == 200, r.text
    assert_complete_and_clean(client, stack.url, token, stack.data_dir, stack.redis_url, file_id, data)
    report(
        "disk pressure",
        free_at_start=free,
        threshold=threshold,
        accepted_before_507=accepted,
        free_when_refused=still_free,
        resent_bytes=len(data) - accepted,
    )
