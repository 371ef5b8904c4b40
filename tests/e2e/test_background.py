"""Background work for real (CONTRACT 7): Celery beat scheduling persist and cleanup, two beats
at once, and Flower behind basic auth. Each test runs its own stack and extra processes."""

from __future__ import annotations

import asyncio
import os
import re
import time

import httpx
import pytest
import redis.asyncio as aioredis

from core.maintenance import job_lock
from core.state import UploadRepository
from ops.redis_server import free_port
from tests.faults import (
    Processes,
    post_chunk,
    status,
    wait_for_log,
)
from tests.support import new_id, wait_for_state, wait_until, workers_command

FAST = {"FT_PERSIST_INTERVAL": "1", "FT_PERSIST_AFTER": "1"}


@pytest.fixture
def processes(make_stack):
    """Depends on make_stack so that these stop before the stacks (and their databases) go."""
    procs = Processes()
    yield procs
    procs.stop_all()


def persist_runs(*workers) -> list[tuple[str, str]]:
    """(task id, result text) of every finished uploads.persist run in these workers' logs."""
    runs = []
    for worker in workers:
        for m in re.finditer(r"Task uploads\.persist\[([0-9a-f-]+)\] succeeded in [0-9.e-]+s: (\{.*\})", worker.log()):
            runs.append((m[1], m[2]))
    return runs


def test_beat_persists_idle_uploads_and_removes_stale_ones(make_stack, processes, client):
    # Persist must be seen before the cleanup removes the upload: 15 s of idleness leave a loaded
    # machine time enough to start beat and run a persist (6 s did not always).
    env = {**FAST, "FT_CLEANUP_INTERVAL": "1", "FT_STALE_AFTER": "15"}
    stack = make_stack(**env)
    token = stack.token()
    # The worker's own start-up sweep has run (before any upload existed).
    wait_for_log(stack.worker, r"Task uploads\.persist\[[0-9a-f-]+\] succeeded")
    data = os.urandom(300_000)
    partial, whole = new_id("idle"), new_id("whole")
    assert post_chunk(client, stack.url, token, whole, data, 0, len(data)).status_code == 200
    assert wait_for_state(client, stack.url, token, whole)["state"] == "complete"
    assert post_chunk(client, stack.url, token, partial, data[:100_000], 0, len(data)).status_code == 200
    committed_at = time.time()
    assert status(client, stack, token, partial).json()["persisted_at"] is None

    beat = processes.beat(stack, "a", **env)
    # Nobody triggers anything: beat sends `persist`, the worker writes the manifest.
    body = wait_until(
        lambda: (b := status(client, stack, token, partial).json())["persisted_at"] and b,
        timeout=60,
        what="beat's persist to record the idle upload",
    )
    manifest = stack.data_dir / "staging" / partial / "manifest.json"
    assert manifest.exists() and body["received_bytes"] == 100_000
    assert "Sending due task persist (uploads.persist)" in beat.log()
    # ... and later beat's `cleanup` removes it, once idle for FT_STALE_AFTER, bytes and manifest too.
    # (The upload answers 404 from the moment cleanup marks it expired, a moment before its
    # directory is gone: wait for both.)
    wait_until(
        lambda: (
            status(client, stack, token, partial).status_code == 404
            and not (stack.data_dir / "staging" / partial).exists()
        ),
        timeout=60,
        what="beat's cleanup to remove the stale upload and its bytes",
    )
    assert time.time() - committed_at >= 15
    assert "Sending due task cleanup (uploads.cleanup)" in beat.log()
    assert status(client, stack, token, whole).json()["state"] == "complete"
    assert (stack.data_dir / "files" / whole / "data").read_bytes() == data


def test_two_beats_never_run_a_job_twice(make_stack, processes, client):
    """Two beats and two workers: one beat schedules (RedBeat's lock), one job run at a time
    (the job's own Redis lock). Each part fails if its lock is missing."""
    stack = make_stack(**FAST)
    w2 = processes.worker(stack, "w2", **FAST)  # a second worker, so two runs *could* overlap
    wait_for_log(w2, r"w2@\S+ ready")
    token = stack.token()

    beat_a = processes.beat(stack, "a", **FAST)
    wait_for_log(beat_a, r"beat: Acquired lock")
    beat_b = processes.beat(stack, "b", **FAST)
    wait_for_log(beat_b, r"beat: Acquiring lock")
    workers = (stack.worker, w2)

    # 1. Scheduling rate: one run per FT_PERSIST_INTERVAL (1 s). Two schedulers would double it.
    start_runs, started = len(persist_runs(*workers)), time.monotonic()
    wait_until(lambda: len(persist_runs(*workers)) >= start_runs + 6, timeout=30, what="6 more persist runs")
    elapsed = time.monotonic() - started
    assert elapsed >= 4.0, f"6 runs of a 1 s job in {elapsed:.1f}s: more than one beat is scheduling"
    assert "Sending due task" not in beat_b.log(), "the second beat scheduled while the first held the lock"
    assert beat_a.alive() and beat_b.alive()

    # 2. While a run holds the job's lock (here: us, exactly as a long persist run would), every
    #    other run is refused, and an idle upload is not touched; once released, it is persisted.
    file_id = new_id("held")
    data = os.urandom(50_000)

    async def hold_the_lock():
        r = aioredis.Redis.from_url(stack.redis_url)
        try:
            async with job_lock(UploadRepository(r), "persist"):
                assert post_chunk(client, stack.url, token, file_id, data[:10_000], 0, len(data)).status_code == 200
                skipped_before = sum("skipped" in res for _, res in persist_runs(*workers))
                await asyncio.to_thread(
                    wait_until,
                    lambda: sum("skipped" in res for _, res in persist_runs(*workers)) >= skipped_before + 3,
                    timeout=30,
                    what="3 persist runs refused by the lock",
                )
                assert status(client, stack, token, file_id).json()["persisted_at"] is None
        finally:
            await r.aclose()

    asyncio.run(hold_the_lock())
    wait_until(
        lambda: status(client, stack, token, file_id).json()["persisted_at"],
        timeout=20,
        what="the upload to be persisted once the lock is free",
    )

    # (No check of run intervals rebuilt from the two workers' log timestamps: they have 1 ms
    # resolution and are written after each run, late on a loaded machine, so such a check could
    # fail with no overlap at all. Part 2 proves the exclusion itself.)

    # 3. The first beat stops (releasing its lock): the second takes over the schedule.
    beat_a.stop()
    wait_for_log(beat_b, r"beat: Acquired lock", timeout=30)
    wait_for_log(beat_b, r"Sending due task persist", timeout=30, count=2)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_flower_requires_basic_auth(stack, processes, how):
    port = free_port()
    args = workers_command("flower")
    env = {"FT_FLOWER_PORT": str(port)}
    if how == "flag":
        args.append("--basic-auth=ops:s3cret-pass")
    else:
        env["FT_FLOWER_BASIC_AUTH"] = "ops:s3cret-pass"  # how `make run` passes it (kept out of `ps`)
    flower = processes.start(args, stack, f"flower-{how}.log", **env)
    url = f"http://127.0.0.1:{port}"

    def answers():
        if not flower.alive():
            raise RuntimeError(f"flower exited:\n{flower.log()[-3000:]}")
        return httpx.get(f"{url}/healthcheck", timeout=2).status_code

    wait_until(answers, timeout=30, interval=0.2, what="Flower to answer")
    for path in ("/api/workers", "/api/tasks", "/workers", "/tasks", "/"):
        assert httpx.get(f"{url}{path}", timeout=10).status_code == 401, path
        assert httpx.get(f"{url}{path}", auth=("ops", "wrong"), timeout=10).status_code == 401, path
        assert httpx.get(f"{url}{path}", auth=("nobody", "s3cret-pass"), timeout=10).status_code == 401, path
    for path in ("/workers", "/tasks", "/api/tasks"):
        assert httpx.get(f"{url}{path}", auth=("ops", "s3cret-pass"), timeout=10).status_code == 200, path
    # Flower really talks to our broker: it lists the stack's worker.
    workers = wait_until(
        lambda: (
            (
                r := httpx.get(f"{url}/api/workers", params={"refresh": 1}, auth=("ops", "s3cret-pass"), timeout=15)
            ).status_code
            == 200
            and any(name.startswith("w1@") for name in r.json())
            and r.json()
        ),
        timeout=30,
        interval=0.5,
        what="Flower to list the worker",
    )
    assert any(name.startswith("w1@") for name in workers)
