"""Per-user limits and bounded answers on the real stack: what one user may hold open, how fast
they may create uploads, how many chunks an upload may hold, how long /status may get."""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from ops.redis_server import free_port, start_redis
from tests.support import bearer, new_id, running_stack, send_chunk, start_worker, wait_for_state

TiB = 1024**4


@pytest.fixture
def limited(make_stack):
    """A stack whose users may hold 2 uploads open, declaring 1000 bytes in all."""
    return make_stack(FT_MAX_OPEN_UPLOADS="2", FT_USER_QUOTA_BYTES="1000", FT_UPLOAD_CREATE_RATE="0")


def test_open_uploads_and_declared_bytes_are_limited_per_user(limited, client):
    stack, data = limited, os.urandom(1000)
    alice, bob = stack.token(), stack.token()
    first, second, third = new_id("q"), new_id("q"), new_id("q")
    assert send_chunk(client, stack.url, alice, first, data, 0, 99, total=600).status_code == 200

    over = send_chunk(client, stack.url, alice, second, data, 0, 99, total=401)
    assert over.status_code == 413
    assert over.json() == {"code": "quota_exceeded", "detail": over.json()["detail"], "quota_bytes_left": 400}
    assert client.get(f"{stack.url}/status/{second}", headers=bearer(alice)).status_code == 404

    assert send_chunk(client, stack.url, alice, second, data, 0, 99, total=400).status_code == 200
    crowded = send_chunk(client, stack.url, alice, third, data, 0, 0, total=1)
    assert crowded.status_code == 429 and crowded.json()["code"] == "too_many_uploads"
    assert int(crowded.headers["Retry-After"]) > 0 and crowded.json()["max_open_uploads"] == 2
    # Chunks of uploads already open are not creations: they go on.
    assert send_chunk(client, stack.url, alice, first, data, 100, 199, total=600).status_code == 200
    # Another user has limits of their own.
    assert send_chunk(client, stack.url, bob, third, data, 0, 0, total=1).status_code == 200

    # An upload that completes, or is deleted, is no longer open.
    done = new_id("q")
    assert send_chunk(client, stack.url, bob, done, data, 0, 0, total=1).status_code == 200
    assert wait_for_state(client, stack.url, bob, done)["state"] == "complete"
    assert send_chunk(client, stack.url, bob, new_id("q"), data, 0, 0, total=2).status_code == 200
    assert client.delete(f"{stack.url}/upload/{second}", headers=bearer(alice)).status_code == 204
    assert send_chunk(client, stack.url, alice, new_id("q"), data, 0, 0, total=1).status_code == 200


def test_creating_uploads_too_fast_is_429_with_retry_after(make_stack, client):
    stack = make_stack(FT_UPLOAD_CREATE_RATE="3")
    token, data = stack.token(), b"rr"
    answers = [send_chunk(client, stack.url, token, new_id("rate"), data, 0, 0) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[-1].json()["code"] == "rate_limited"
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 20  # one creation per 20 s at 3 a minute
    # Uploads already created take their chunks whatever the rate.
    existing = answers[0].json()["file_id"]
    assert send_chunk(client, stack.url, token, existing, data, 1, 1).status_code == 200


def test_declaring_terabytes_is_stopped_by_the_default_quota(stack, client):
    """With the defaults (10 TiB of declared bytes open per user), the eleventh 1 TiB upload
    is refused; each accepted one holds one sparse staging file, not a terabyte."""
    token, answers = stack.token(), []
    for _ in range(11):
        answers.append(send_chunk(client, stack.url, token, new_id("tib"), b"t" * 10, 0, 9, total=TiB).status_code)
    assert answers == [200] * 10 + [413]


def test_an_upload_cut_into_too_many_small_chunks_is_409_and_larger_chunks_go_on(make_stack, client):
    stack = make_stack(FT_MAX_CHUNKS_PER_UPLOAD="5", FT_MIN_AVERAGE_CHUNK_BYTES="1000")
    token, file_id, data = stack.token(), new_id("frag"), os.urandom(20_000)
    for start in range(0, 10, 2):
        assert send_chunk(client, stack.url, token, file_id, data, start, start).status_code == 200
    refused = send_chunk(client, stack.url, token, file_id, data, 10, 10)
    assert refused.status_code == 409
    assert refused.json()["code"] == "too_many_chunks" and refused.json()["max_chunks"] == 5
    # More chunks are fine while they average at least 1000 bytes: the rest of the file in one.
    assert send_chunk(client, stack.url, token, file_id, data, 10, 19_999).status_code == 200
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["missing_ranges"] == [[1, 1], [3, 3], [5, 5], [7, 7], [9, 9]]
    assert status["missing_ranges_truncated"] is False
    for start in range(1, 10, 2):  # 11 chunks, 19,995+ bytes: still above the average
        assert send_chunk(client, stack.url, token, file_id, data, start, start).status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"


# --- the attacks of docs/RELIABILITY.md "Fair use", with the default limits ------------------------


def _post_all(url: str, token: str, requests: list[tuple[str, int, int, int]], threads: int = 16):
    """POST one-byte chunks (file_id, start, total) from `threads` clients at once; their answers."""

    def send(job):
        file_id, start, total, _ = job
        with httpx.Client(timeout=60) as c:
            return send_chunk(c, url, token, file_id, b"\0" * total, start, start, total=total)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(send, requests))


@pytest.mark.slow
def test_floods_of_uploads_and_fragments_meet_the_default_limits(make_stack, client, capsys):
    stack = make_stack()
    token = stack.token()

    began = time.monotonic()
    flood = _post_all(stack.url, token, [(new_id("flood"), 0, 2, i) for i in range(1100)])
    flood_seconds = time.monotonic() - began
    codes = Counter(r.status_code for r in flood)
    assert codes == {200: 1000, 429: 100}
    assert {r.json()["code"] for r in flood if r.status_code == 429} == {"too_many_uploads"}

    other = stack.token()
    file_id = new_id("frag")
    fragments = _post_all(stack.url, other, [(file_id, 2 * i + 1, 2400, i) for i in range(1100)])
    assert Counter(r.status_code for r in fragments) == {200: 1000, 409: 100}
    timings, size = [], 0
    for _ in range(20):
        started = time.perf_counter()
        answer = client.get(f"{stack.url}/status/{file_id}", headers=bearer(other))
        timings.append(time.perf_counter() - started)
        size = len(answer.content)
    body = answer.json()
    assert len(body["missing_ranges"]) == 1000 and body["missing_ranges_truncated"] is True

    with capsys.disabled():
        print(
            f"\n[fair use] 1100 creations by one user from 16 clients in {flood_seconds:.1f} s: {dict(codes)}; "
            f"1100 one-byte chunks into one upload: {dict(Counter(r.status_code for r in fragments))}; "
            f"/status then {size} bytes, median {statistics.median(timings) * 1000:.1f} ms"
        )


def test_a_redis_refusing_writes_is_503_not_500(tmp_path, client):
    """What a full disk does to a Redis that saves snapshots on it (MISCONF), shown here with the
    refusal that needs no full disk: writes need a replica that does not exist (NOREPLICAS).
    A redis-server of its own: the refusal is server-wide, and every other stack's worker would
    meet it too. A Celery worker that meets the refusal may exit ("Unrecoverable error:
    ResponseError"); `make run`'s supervisor restarts it, and this test starts a fresh one."""
    port = free_port()
    server_proc = start_redis(port, tmp_path / "redis", persistent=False)
    try:
        with running_stack(tmp_path / "stack", f"redis://127.0.0.1:{port}/0") as stack:
            token, file_id, data = stack.token(), new_id("ro"), os.urandom(200)
            assert send_chunk(client, stack.url, token, file_id, data, 0, 99).status_code == 200
            server = redis.Redis(port=port)
            server.config_set("min-replicas-to-write", 1)
            try:
                refused = send_chunk(client, stack.url, token, file_id, data, 100, 199)
                reading = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token))
            finally:
                server.config_set("min-replicas-to-write", 0)
                server.close()
            assert refused.status_code == 503 and refused.json()["code"] == "unavailable", refused.text
            assert reading.status_code == 200 and reading.json()["received_bytes"] == 100
            stack.worker.stop()  # it may be exiting on the refusal right now: start a fresh one either way
            stack.worker = start_worker(stack.data_dir, stack.redis_url, stack.log_dir, name="w2")
            assert send_chunk(client, stack.url, token, file_id, data, 100, 199).status_code == 200
            assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    finally:
        server_proc.terminate()
        server_proc.wait(10)
