"""Failures from outside, over real HTTP with a real worker: dropped connections, stalled
clients, killed workers, a Redis that loses its data (CONTRACT 4, 5 and 7)."""

from __future__ import annotations

import hashlib
import os
import signal
import time

import pytest

from core.config import Settings
from core.jobs import celery_client
from core.state import assembly_lock_key
from tests.faults import (
    BigFile,
    MiB,
    child_pids,
    claims_key,
    drop,
    open_partial_chunk,
    post_chunk,
    raw_chunk_request,
    read_response,
    stack_redis,
    status,
    task_events,
)
from tests.support import JWT_SECRET, bearer, new_id, start_worker, wait_for_state, wait_until


def progress(body: dict) -> tuple:
    return body["state"], body["received_bytes"], body["next_expected_byte"], body["missing_ranges"]


def final_path(stack, file_id: str):
    return stack.data_dir / "files" / file_id / "data"


# --- (a) clients that go away mid-chunk ----------------------------------------------------


@pytest.mark.parametrize("abortive", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("cut", ["inside-chunk-header", "mid-payload", "all-but-one-byte"])
def test_dropped_connection_loses_that_chunk_only(stack, client, cut, abortive):
    token = stack.token()
    data = os.urandom(3 * 256 * 1024)
    file_id = new_id()
    third = len(data) // 3
    assert post_chunk(client, stack.url, token, file_id, data[:third], 0, len(data)).status_code == 200
    before = status(client, stack, token, file_id).json()

    payload = data[third : 2 * third]
    sent = {"inside-chunk-header": 6, "mid-payload": 12 + len(payload) // 2, "all-but-one-byte": 12 + len(payload) - 1}[
        cut
    ]
    sock = open_partial_chunk(stack.url, token, file_id, payload, third, len(data), sent)
    r = stack_redis(stack)
    if cut != "inside-chunk-header":
        # The server has read the chunk header and holds the range: the drop happens mid-write.
        wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the chunk's claim")
    drop(sock, abortive)
    wait_until(lambda: r.hlen(claims_key(file_id)) == 0, timeout=10, what="the claim to be released")

    after = status(client, stack, token, file_id).json()
    assert progress(after) == progress(before) == ("uploading", third, third, [[third, len(data) - 1]])
    # The very same range is accepted now, and the file completes byte-identical.
    resent = post_chunk(client, stack.url, token, file_id, payload, third, len(data))
    assert resent.status_code == 200, resent.text
    assert resent.json()["received_bytes"] == 2 * third
    assert post_chunk(client, stack.url, token, file_id, data[2 * third :], 2 * third, len(data)).status_code == 200
    done = wait_for_state(client, stack.url, token, file_id)
    assert done["state"] == "complete" and done["sha256"] == hashlib.sha256(data).hexdigest()
    assert final_path(stack, file_id).read_bytes() == data


def test_dropped_first_chunk_leaves_no_upload_behind(stack, client):
    token = stack.token()
    data = os.urandom(200_000)
    file_id = new_id()
    sock = open_partial_chunk(stack.url, token, file_id, data, 0, len(data), 12 + 1000)
    r = stack_redis(stack)
    wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the chunk's claim")
    # While the first chunk is in flight the upload exists (created by its claim) ...
    assert status(client, stack, token, file_id).json()["received_bytes"] == 0
    drop(sock, abortive=True)
    # ... and once it is dropped, nothing of it is kept.
    wait_until(
        lambda: status(client, stack, token, file_id).status_code == 404,
        timeout=10,
        what="the provisional upload to be dropped",
    )
    assert post_chunk(client, stack.url, token, file_id, data, 0, len(data)).status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert final_path(stack, file_id).read_bytes() == data


def test_short_body_with_connection_left_open_then_closed(stack, client):
    token = stack.token()
    data = os.urandom(1 * MiB)
    file_id = new_id()
    half = len(data) // 2
    assert post_chunk(client, stack.url, token, file_id, data[:1000], 0, len(data)).status_code == 200
    before = status(client, stack, token, file_id).json()

    # Content-Length promises the whole chunk; a third of it arrives, then the client stalls.
    sock = open_partial_chunk(stack.url, token, file_id, data[1000:half], 1000, len(data), 12 + (half - 1000) // 3)
    r = stack_redis(stack)
    try:
        wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the stalled chunk's claim")
        # Meanwhile the upload is unchanged, the stalled range is refused, other ranges go on in parallel.
        assert progress(status(client, stack, token, file_id).json()) == progress(before)
        busy = post_chunk(client, stack.url, token, file_id, data[1000:half], 1000, len(data))
        assert busy.status_code == 409 and busy.json()["code"] == "overlap"
        other = post_chunk(client, stack.url, token, file_id, data[half:], half, len(data))
        assert other.status_code == 200 and other.json()["received_bytes"] == 1000 + len(data) - half
    finally:
        sock.close()
    wait_until(lambda: r.hlen(claims_key(file_id)) == 0, timeout=10, what="the claim to be released")
    body = status(client, stack, token, file_id).json()
    assert progress(body) == ("uploading", 1000 + len(data) - half, 1000, [[1000, half - 1]])
    assert post_chunk(client, stack.url, token, file_id, data[1000:half], 1000, len(data)).status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert final_path(stack, file_id).read_bytes() == data


def test_slow_chunk_keeps_its_claim_by_renewing_it(make_stack, client):
    """A chunk that takes longer than a third of FT_CLAIM_LEASE renews its claim and succeeds."""
    stack = make_stack(FT_CLAIM_LEASE="1")
    token = stack.token()
    data = os.urandom(512 * 1024)
    file_id = new_id()
    sock = open_partial_chunk(stack.url, token, file_id, data, 0, len(data), 12 + 1000)
    try:
        r = stack_redis(stack)
        wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the chunk's claim")
        # Trickle the rest for longer than the lease; each piece arrives while the claim is held.
        _, full = raw_chunk_request(stack.url, token, file_id, data, 0, len(data))
        rest = full[12 + 1000 :]
        deadline = time.monotonic() + 2.5  # well past the 1 s lease
        pieces = [rest[i : i + 16 * 1024] for i in range(0, len(rest), 16 * 1024)]
        leases = set()
        for i, piece in enumerate(pieces):
            leases.update(v.decode().rsplit(":", 1)[1] for v in r.hvals(claims_key(file_id)))
            sock.sendall(piece)
            if i < len(pieces) - 1:  # pacing, as a slow client does
                time.sleep(max(0.0, (deadline - time.monotonic()) / (len(pieces) - i)))
        code, text = read_response(sock)
    finally:
        sock.close()
    assert code == 200, text
    assert len(leases) >= 3, f"the claim was not renewed while the chunk trickled in: {leases}"
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert final_path(stack, file_id).read_bytes() == data


def test_stalled_chunk_that_lost_its_claim_never_overwrites_the_new_owner(make_stack, client):
    """A writer stalled past its lease loses the range; when it wakes up, none of its bytes land."""
    stack = make_stack(FT_CLAIM_LEASE="1")
    token = stack.token()
    data = os.urandom(256 * 1024)
    file_id = new_id()
    garbage = os.urandom(len(data))  # what the stalled writer sends for the same range
    sock = open_partial_chunk(stack.url, token, file_id, garbage, 0, len(data), 12 + 4096)
    try:
        r = stack_redis(stack)
        wait_until(lambda: r.hlen(claims_key(file_id)) == 1, timeout=10, what="the stalled chunk's claim")
        # Once its lease is over, someone else claims and stores the range.
        ok = wait_until(
            lambda: (
                (resp := post_chunk(client, stack.url, token, file_id, data, 0, len(data))).status_code == 200 and resp
            ),
            timeout=10,
            interval=0.2,
            what="the range to be free again",
        )
        assert ok.json()["state"] == "assembling"
        _, full = raw_chunk_request(stack.url, token, file_id, garbage, 0, len(data))
        try:
            sock.sendall(full[12 + 4096 :])
            code, _ = read_response(sock)
            assert code in (400, 409), code
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may have answered and closed already
    finally:
        sock.close()
    done = wait_for_state(client, stack.url, token, file_id)
    assert done["state"] == "complete", done
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert final_path(stack, file_id).read_bytes() == data


# --- (b) a worker killed while it assembles --------------------------------------------------


def _upload_big(client, stack, token, file_id: str, big: BigFile) -> None:
    """All blocks but the first, then the first: assembly starts with the last response."""
    sha = big.sha256()
    parts = list(big.parts())
    for start, part in parts[1:] + parts[:1]:
        r = post_chunk(client, stack.url, token, file_id, part, start, big.size, X_File_SHA256=sha)
        assert r.status_code == 200, r.text
    assert r.json()["state"] == "assembling"


def _assert_complete_and_clean(client, stack, token, file_id: str, big: BigFile, timeout: float = 60) -> dict:
    done = wait_for_state(client, stack.url, token, file_id, timeout=timeout)
    assert done["state"] == "complete", done
    assert done["sha256"] == big.sha256()
    assert big.matches(final_path(stack, file_id))
    assert sorted(p.name for p in final_path(stack, file_id).parent.iterdir()) == ["data", "meta.json"]
    assert not (stack.data_dir / "staging" / file_id).exists()
    assert list((stack.data_dir / "staging").iterdir()) == []
    return done


def _kill_when_assembling(stack, file_id: str, kill) -> None:
    """Call `kill()` as soon as a worker holds the file's assembly lease (it is then verifying)."""
    r = stack_redis(stack)
    wait_until(lambda: r.exists(assembly_lock_key(file_id)), timeout=30, interval=0.005, what="the assembly to start")
    kill()


def _assert_killed_mid_assembly(client, stack, token, file_id: str) -> None:
    body = status(client, stack, token, file_id).json()
    assert body["state"] == "assembling", f"inconclusive: the assembly ended before the kill ({body['state']})"
    assert not (stack.data_dir / "files" / file_id / "meta.json").exists()


def test_worker_killed_whole_during_assembly(make_stack, client):
    """SIGKILL of the worker's whole process group mid-assembly; a new worker finishes the file."""
    stack = make_stack(FT_ASSEMBLY_LEASE="3")
    token = stack.token()
    big = BigFile(8)  # 512 MiB: verifying it takes a noticeable moment
    file_id = new_id("big")
    _upload_big(client, stack, token, file_id, big)
    _kill_when_assembling(stack, file_id, stack.worker.kill)
    stack.worker.popen.wait(10)
    _assert_killed_mid_assembly(client, stack, token, file_id)
    assert [e for _, e in task_events(stack.worker.log(), "uploads.assemble")] == ["received"]

    # The dead run's lease is not renewed any more: it lapses within FT_ASSEMBLY_LEASE.
    r = stack_redis(stack)
    wait_until(lambda: not r.exists(assembly_lock_key(file_id)), timeout=10, what="the lease to lapse")
    stack.worker = start_worker(stack.data_dir, stack.redis_url, stack.log_dir, name="w2", FT_ASSEMBLY_LEASE="3")
    _assert_complete_and_clean(client, stack, token, file_id, big)
    # It was the new worker's start-up sweep that found the orphan and assembled it.
    log = stack.worker.log()
    assert f"'requeued': ['{file_id}']" in log
    assert "succeeded" in [e for _, e in task_events(log, "uploads.assemble")]


def test_pool_child_killed_during_assembly_is_redelivered(make_stack, client):
    """SIGKILL of only the prefork child: the task is rejected and runs again on the same worker."""
    stack = make_stack(FT_ASSEMBLY_LEASE="3")
    token = stack.token()
    children = wait_until(lambda: child_pids(stack.worker.pid), timeout=10, what="the pool child")
    assert len(children) == 1, children
    big = BigFile(8)
    file_id = new_id("big")
    _upload_big(client, stack, token, file_id, big)
    _kill_when_assembling(stack, file_id, lambda: os.kill(children[0], signal.SIGKILL))
    _assert_killed_mid_assembly(client, stack, token, file_id)
    _assert_complete_and_clean(client, stack, token, file_id, big)
    assert stack.worker.alive()
    log = stack.worker.log()
    assert "WorkerLostError" in log or "SIGKILL" in log
    events = task_events(log, "uploads.assemble")
    task_id = events[0][0]
    assert (task_id, "succeeded") in events, events  # the same task, redelivered, finished it
    assert children[0] not in child_pids(stack.worker.pid)


# --- (c) Redis loses everything ---------------------------------------------------------------


def _run_persist(stack) -> dict:
    """Run the `uploads.persist` task once on the stack's worker, as beat would."""
    app = celery_client(Settings(redis_url=stack.redis_url, data_dir=stack.data_dir, jwt_secret=JWT_SECRET))
    try:
        return app.send_task("uploads.persist").get(timeout=30)
    finally:
        app.close()


def test_redis_loss_restores_persisted_uploads_and_complete_files(make_stack, client):
    """FLUSHDB of the stack's database: partial uploads come back from their manifests,
    complete files from their meta.json, and both carry on as if nothing happened."""
    stack = make_stack(FT_PERSIST_AFTER="0")
    token = stack.token()
    whole, whole_id = os.urandom(100_000), new_id("whole")
    assert post_chunk(client, stack.url, token, whole_id, whole, 0, len(whole)).status_code == 200
    whole_before = wait_for_state(client, stack.url, token, whole_id)
    assert whole_before["state"] == "complete"
    data = os.urandom(2 * MiB + 333)
    file_id = new_id("lost")
    q = 512 * 1024
    sha = hashlib.sha256(data).hexdigest()
    for s, e in [(0, q - 1), (2 * q, 3 * q - 1), (4 * q, len(data) - 1)]:
        r = post_chunk(
            client,
            stack.url,
            token,
            file_id,
            data[s : e + 1],
            s,
            len(data),
            X_File_Name="d%C3%A9j%C3%A0.bin",
            X_File_SHA256=sha,
        )
        assert r.status_code == 200, r.text
    report = _run_persist(stack)
    assert file_id in report["persisted"], report
    persisted = status(client, stack, token, file_id).json()
    assert persisted["persisted_at"] is not None
    assert (stack.data_dir / "staging" / file_id / "manifest.json").exists()
    # Activity after the manifest is not in it: Redis alone knows about this chunk.
    assert post_chunk(client, stack.url, token, file_id, data[q : 2 * q], q, len(data)).status_code == 200

    stack_redis(stack).flushdb()  # the stack's own database: everything Redis knew is gone

    whole_after = status(client, stack, token, whole_id).json()
    assert {k: whole_after[k] for k in ("state", "total_bytes", "sha256", "created_at", "missing_ranges")} == {
        k: whole_before[k] for k in ("state", "total_bytes", "sha256", "created_at", "missing_ranges")
    }
    assert client.get(f"{stack.url}/download/{whole_id}", headers=bearer(token)).content == whole

    restored = status(client, stack, token, file_id)
    assert restored.status_code == 200, restored.text
    after = restored.json()
    for name in (
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
        assert after[name] == persisted[name], name
    assert after["missing_ranges"] == [[q, 2 * q - 1], [3 * q, 4 * q - 1]]
    assert after["file_name"] == "déjà.bin"
    # Still the owner's only.
    assert status(client, stack, stack.token(), file_id).status_code == 404

    for s, e in after["missing_ranges"]:
        r = post_chunk(client, stack.url, token, file_id, data[s : e + 1], s, len(data))
        assert r.status_code == 200, r.text
    done = wait_for_state(client, stack.url, token, file_id)
    assert done["state"] == "complete" and done["sha256"] == sha  # the remembered X-File-SHA256 held
    assert final_path(stack, file_id).read_bytes() == data
    assert not (stack.data_dir / "staging" / file_id).exists()


def test_redis_loss_keeps_complete_files(stack, client):
    token = stack.token()
    data = os.urandom(300_000)
    file_id = new_id("kept")
    assert post_chunk(client, stack.url, token, file_id, data, 0, len(data), X_File_Name="k.bin").status_code == 200
    before = wait_for_state(client, stack.url, token, file_id)
    assert before["state"] == "complete"
    # Only this upload's keys: the shared stack's database is used by other tests at the same time.
    r = stack_redis(stack)
    r.delete(f"ft:up:{file_id}", f"ft:up:{file_id}:chunks", f"ft:up:{file_id}:claims")
    after = status(client, stack, token, file_id).json()
    for name in (
        "state",
        "total_bytes",
        "received_bytes",
        "next_expected_byte",
        "missing_ranges",
        "file_name",
        "created_at",
        "sha256",
    ):
        assert after[name] == before[name], name
    got = client.get(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert got.status_code == 200 and got.content == data
    again = post_chunk(client, stack.url, token, file_id, data, 0, len(data))
    assert again.status_code == 409 and again.json()["code"] == "already_complete"
