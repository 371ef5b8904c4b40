"""A disk that really fills up mid-chunk (a tiny tmpfs as FT_DATA_DIR): 507, upload unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from contextlib import ExitStack

import httpx
import pytest
import redis

from core.users import UserStore
from tests.faults import claims_key, open_partial_chunk, raw_chunk_request, read_response
from tests.support import bearer, login, send_chunk, start_api, start_worker, wait_for_state, wait_until

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_filling_mid_chunk_is_507_and_changes_nothing(small_disk, tmp_path, redis_server):
    redis_url = redis_server.url.rsplit("/", 1)[0] + "/13"
    data_dir = small_disk / "data"
    with ExitStack() as cleanup:  # whatever fails, every process stops and the database is flushed
        database = redis.Redis.from_url(redis_url)
        database.flushdb()
        cleanup.callback(database.close)
        cleanup.callback(database.flushdb)
        worker = start_worker(data_dir, redis_url, tmp_path, name="small")
        cleanup.callback(worker.stop)
        api, url = start_api(data_dir, redis_url, tmp_path)
        cleanup.callback(api.stop)
        UserStore(data_dir / "users.sqlite3").set("u", "pw")
        token = login(url, "u", "pw")
        data = os.urandom(4 * MiB)
        file_id = f"full-{uuid.uuid4().hex[:8]}"
        with httpx.Client(timeout=60) as client:
            assert send_chunk(client, url, token, file_id, data, 0, MiB - 1).status_code == 200
            # Start the next chunk: it passes the free-space check (FT_MIN_FREE_BYTES is 0 in
            # tests) and claims its range; then fill the disk, then send the rest of it.
            sock = open_partial_chunk(url, token, file_id, data[MiB : 3 * MiB], MiB, len(data), 12 + 64 * 1024)
            wait_until(lambda: redis.Redis.from_url(redis_url).hlen(claims_key(file_id)) == 1,
                       timeout=10, what="the chunk's claim")
            filler = small_disk / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
            assert shutil.disk_usage(small_disk).free < 2 * MiB
            head, body = raw_chunk_request(url, token, file_id, data[MiB : 3 * MiB], MiB, len(data))
            try:
                sock.sendall(body[12 + 64 * 1024 :])
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered early; the answer is still readable
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
