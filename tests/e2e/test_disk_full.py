"""A disk that really fills up mid-chunk (a tiny tmpfs as FT_DATA_DIR): 507, upload unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

import httpx
import pytest
import redis

from core.users import UserStore
from tests.faults import claims_key, open_partial_chunk, raw_chunk_request, read_response
from tests.support import bearer, login, send_chunk, start_api, start_worker, wait_for_state, wait_until

MiB = 1024 * 1024


@contextmanager
def tmpfs(mount_point: Path, size: str):
    """A file system of `size` at `mount_point` (root only; the test is skipped elsewhere)."""
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "6m") as mount_point:
        yield mount_point


@pytest.fixture
def disk_80m(tmp_path):
    with tmpfs(tmp_path / "disk80", "80m") as mount_point:
        yield mount_point


class SmallDiskStack:
    """An API and a worker on a data dir of the test's choosing and their own Redis database."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.redis_url, self.log_dir, self.procs = redis_url, log_dir, []

    def start(self, data_dir: Path) -> str:
        self.procs.append(start_worker(data_dir, self.redis_url, self.log_dir, name="small"))
        api, url = start_api(data_dir, self.redis_url, self.log_dir)
        self.procs.append(api)
        return url


@pytest.fixture
def small_stack(tmp_path, redis_server):
    stack = SmallDiskStack(redis_server.url.rsplit("/", 1)[0] + "/13", tmp_path)
    database = redis.Redis.from_url(stack.redis_url)
    database.flushdb()
    try:
        yield stack
    finally:
        with ExitStack() as cleanup:  # whatever fails, every process stops and the database is flushed
            cleanup.callback(database.close)
            cleanup.callback(database.flushdb)
            for proc in stack.procs:
                cleanup.callback(proc.stop)


def test_disk_filling_mid_chunk_is_507_and_changes_nothing(small_disk, small_stack):
    data_dir = small_disk / "data"
    url = small_stack.start(data_dir)
    redis_url = small_stack.redis_url
    UserStore(data_dir / "users.sqlite3").set("u", "pw")
    token = login(url, "u", "pw")
    data = os.urandom(4 * MiB)
    file_id = f"full-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=60) as client:
        assert send_chunk(client, url, token, file_id, data, 0, MiB - 1).status_code == 200
        # Start the next chunk: it passes the free-space check (FT_MIN_FREE_BYTES is 0 in
        # tests) and claims its range; then fill the disk, then send the rest of it.
        sock = open_partial_chunk(url, token, file_id, data[MiB : 3 * MiB], MiB, len(data), 12 + 64 * 1024)
        wait_until(
            lambda: redis.Redis.from_url(redis_url).hlen(claims_key(file_id)) == 1, timeout=10, what="the chunk's claim"
        )
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
        assert shutil.disk_usage(small_disk).free < 2 * MiB
        _head, body = raw_chunk_request(url, token, file_id, data[MiB : 3 * MiB], MiB, len(data))
        with suppress(BrokenPipeError, ConnectionResetError):  # answered early: still readable
            sock.sendall(body[12 + 64 * 1024 :])
        status_code, answer = read_response(sock)
        sock.close()
        assert status_code == 507, answer
        assert json.loads(answer)["code"] == "insufficient_storage"
        assert b"filled up" in answer  # the write itself hit ENOSPC, not the check before it
        status = client.get(f"{url}/status/{file_id}", headers=bearer(token)).json()
        assert status["received_bytes"] == MiB
        assert status["missing_ranges"] == [[MiB, 4 * MiB - 1]]
        # Space returns: the upload resumes and completes.
        filler.unlink()
        for start in range(MiB, 4 * MiB, MiB):
            assert send_chunk(client, url, token, file_id, data, start, start + MiB - 1).status_code == 200
        assert wait_for_state(client, url, token, file_id)["state"] == "complete"
        assert (data_dir / "files" / file_id / "data").read_bytes() == data


def test_parallel_chunks_on_a_filling_disk_get_200_or_507_and_the_upload_resumes(disk_80m, small_stack):
    """16 chunks of 4 MiB at once onto ~40 MiB of free space. Every chunk used to pass the
    free-space check (all took it before any wrote), the disk reached 0 bytes and some answered
    500. Each now holds its space first: the ones that fit are stored, the rest are refused
    before a byte is written, and the disk never fills."""
    data_dir = disk_80m / "data"
    url = small_stack.start(data_dir)
    UserStore(data_dir / "users.sqlite3").set("u", "pw")
    token = login(url, "u", "pw")
    filler = disk_80m / "filler"
    filler.write_bytes(b"\xff" * (40 * MiB))
    free_before = shutil.disk_usage(disk_80m).free
    chunk, data = 4 * MiB, os.urandom(64 * MiB)
    file_id = f"par-{uuid.uuid4().hex[:8]}"
    starts = range(0, len(data), chunk)

    def send(start: int) -> httpx.Response:
        with httpx.Client(timeout=120) as client:
            return send_chunk(client, url, token, file_id, data, start, start + chunk - 1)

    with ThreadPoolExecutor(len(starts)) as pool:
        answers = dict(zip(starts, pool.map(send, starts), strict=True))
    codes = sorted(r.status_code for r in answers.values())
    print(
        f"\n[disk-full] 16 parallel 4 MiB chunks, {free_before} bytes free: answers {codes}, "
        f"free after {shutil.disk_usage(disk_80m).free}"
    )
    assert set(codes) <= {200, 507}, [(s, r.status_code, r.text) for s, r in answers.items()]
    stored = [s for s, r in answers.items() if r.status_code == 200]
    refused = [s for s, r in answers.items() if r.status_code == 507]
    assert refused and stored, codes
    assert all(answers[s].json()["code"] == "insufficient_storage" for s in refused)
    assert shutil.disk_usage(disk_80m).free > 0
    assert len(stored) * chunk <= free_before

    with httpx.Client(timeout=60) as client:
        status = client.get(f"{url}/status/{file_id}", headers=bearer(token)).json()
        assert status["state"] == "uploading"
        assert status["received_bytes"] == len(stored) * chunk
        missing = sorted(s for s in refused)
        assert [start for start, _ in status["missing_ranges"]] == [
            s for s in missing if s == 0 or s - chunk not in missing
        ]
        # Space returns: the refused chunks are sent again and the file completes, intact.
        filler.unlink()
        for start in refused:
            r = send_chunk(client, url, token, file_id, data, start, start + chunk - 1)
            assert r.status_code == 200, r.text
        assert wait_for_state(client, url, token, file_id)["state"] == "complete"
    assert (data_dir / "files" / file_id / "data").read_bytes() == data
