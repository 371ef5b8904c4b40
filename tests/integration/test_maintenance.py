"""core/maintenance.py against a real redis-server and a real data directory.

Staleness is controlled through the `now` of commits and of the jobs, so nothing waits.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib

import pytest
import redis.asyncio as aioredis

from core import maintenance
from core.state import ACTIVITY_KEY, Chunk, UploadRepository, assembly_lock_key, upload_key
from core.storage import Storage
from core.uploads import UploadService
from tests.support import Enqueued

DAY = 86400.0


class Env:
    """An UploadService on database 1 and a scratch data dir; `enqueued` records assembly requests."""

    def __init__(self, settings, client):
        self.enqueued = Enqueued()
        self.repo = UploadRepository(client)
        self.storage = Storage(settings)
        self.service = UploadService(settings, self.repo, self.storage, self.enqueued)

    async def put(self, file_id: str, start: int, end: int, total: int, now: float, data: bytes | None = None):
        """A chunk as the service stores it: claim, bytes at their offset, commit."""
        payload = data if data is not None else os.urandom(end - start + 1)
        chunk = Chunk(start, end, zlib.crc32(payload))
        token = f"t{start}-{time.monotonic_ns()}"
        claimed = await self.repo.claim(
            file_id, "alice", False, start, end, total, chunk.crc32, token, 60, True, now=now
        )
        assert claimed.outcome == "claimed", claimed
        fd = self.storage.open_for_chunk(file_id, total)
        try:
            os.pwrite(fd, payload, start)
        finally:
            os.close(fd)
        progress = await self.repo.commit(file_id, token, chunk, None, None, now=now)
        assert progress.outcome == "committed"
        return progress


@pytest.fixture
def run(settings, redis_db):
    def runner(fn):
        async def main():
            client = aioredis.Redis.from_url(settings.redis_url)
            try:
                return await fn(Env(settings, client))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


# --- cleanup ---------------------------------------------------------------------------


def test_cleanup_removes_exactly_the_stale_uploads(run, settings, redis_db):
    now = time.time()

    async def scenario(env: Env):
        await env.put("stale-1", 0, 999, 5000, now=now - 2 * DAY)
        await env.put("stale-2", 100, 199, 300, now=now - 3 * DAY)
        await env.put("edge", 0, 9, 100, now=now - DAY)  # exactly at the cutoff: stale
        await env.put("fresh", 0, 999, 5000, now=now - 2 * DAY)
        await env.put("fresh", 1000, 1999, 5000, now=now - 60)  # recent activity keeps it
        await env.put("done", 0, 99, 100, now=now - 5 * DAY)  # becomes assembling ...
        assert await env.repo.transition("done", "assembling", state="complete", sha256="00" * 32)
        await env.put("assembling", 0, 99, 100, now=now - 5 * DAY)  # a worker is on it: never removed
        # A stale upload with a chunk being written right now (a live claim) is kept.
        await env.put("busy", 0, 9, 100, now=now - 5 * DAY)
        live = await env.repo.claim("busy", "alice", False, 10, 19, 100, 1, "live", 600, True)
        assert live.outcome == "claimed"
        # ... whereas a claim whose lease ran out long ago does not protect it.
        await env.put("abandoned", 0, 9, 100, now=now - 5 * DAY)
        dead = await env.repo.claim("abandoned", "alice", False, 10, 19, 100, 1, "dead", 60, True, now=now - 4 * DAY)
        assert dead.outcome == "claimed"
        return await maintenance.cleanup(env.repo, env.storage, older_than=DAY, now=now)

    report = run(scenario)
    assert sorted(report.removed) == ["abandoned", "edge", "stale-1", "stale-2"]
    assert report.freed_bytes >= 1000 + 100 + 10 + 10
    staging = settings.staging_dir
    for gone in report.removed:
        assert not (staging / gone).exists()
        assert not redis_db.exists(upload_key(gone), upload_key(gone) + ":chunks", upload_key(gone) + ":claims")
        assert redis_db.zscore(ACTIVITY_KEY, gone) is None
    for kept in ("fresh", "busy", "assembling"):
        assert (staging / kept / "data").exists(), kept
        assert redis_db.hget(upload_key(kept), "state") in (b"uploading", b"assembling")
    assert redis_db.hget(upload_key("done"), "state") == b"complete"


def test_cleanup_with_a_smaller_age_and_the_default_job_lock(run, settings):
    now = time.time()

    async def scenario(env: Env):
        await env.put("a", 0, 9, 100, now=now - 30)
        await env.put("b", 0, 9, 100, now=now - 5)
        first = await maintenance.cleanup(env.repo, env.storage, older_than=10, now=now)
        # While another run holds the job's lock, a second one refuses to run at all.
        async with maintenance.job_lock(env.repo, "cleanup"):
            with pytest.raises(maintenance.JobBusy):
                await maintenance.cleanup(env.repo, env.storage, older_than=0, now=now)
        assert await env.repo.get("b") is not None
        second = await maintenance.cleanup(env.repo, env.storage, older_than=0, now=now)
        return first, second

    first, second = run(scenario)
    assert first.removed == ["a"]
    assert second.removed == ["b"]


def test_cleanup_judges_uploads_known_only_from_disk(run, settings, redis_db):
    """After Redis lost its state: manifests are restored and judged; orphan bytes go when old."""
    now = time.time()

    async def build(env: Env):
        await env.put("old-manifest", 0, 99, 200, now=now - 3 * DAY)
        await env.put("new-manifest", 0, 99, 200, now=now - 60)
        for file_id in ("old-manifest", "new-manifest"):
            env.service.write_manifest(await env.repo.get(file_id), await env.repo.chunks(file_id), persisted_at=now)

    run(build)
    redis_db.flushdb()
    storage = Storage(settings)
    for orphan, age in (("orphan-old", 3 * DAY), ("orphan-new", 10)):
        fd = storage.open_for_chunk(orphan, 1000)
        os.close(fd)
        os.utime(storage.staging_dir(orphan), (now - age, now - age))

    async def scenario(env: Env):
        return await maintenance.cleanup(env.repo, env.storage, older_than=DAY, now=now)

    report = run(scenario)
    assert report.removed == ["old-manifest"]
    assert not (settings.staging_dir / "old-manifest").exists()
    assert not (settings.staging_dir / "orphan-old").exists()
    assert (settings.staging_dir / "orphan-new").exists()
    assert (settings.staging_dir / "new-manifest" / "manifest.json").exists()
    assert redis_db.hget(upload_key("new-manifest"), "received") == b"100"


# --- persist ---------------------------------------------------------------------------


def _manifest(settings, file_id: str) -> dict | None:
    path = settings.staging_dir / file_id / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_persist_writes_manifests_for_idle_uploads_only(run, settings, redis_db):
    now = time.time()

    async def scenario(env: Env):
        await env.put("idle", 0, 99, 1000, now=now - 600)
        await env.put("idle", 500, 599, 1000, now=now - 400)
        await env.put("active", 0, 99, 1000, now=now - 10)
        await env.put("complete", 0, 99, 100, now=now - 900)
        assert await env.repo.transition("complete", "assembling", state="complete", sha256="00" * 32)
        return await maintenance.persist(
            env.repo, env.storage, idle_for=300, assembly_grace=60, enqueue=env.enqueued, now=now
        )

    report = run(scenario)
    assert report.persisted == ["idle"]
    assert _manifest(settings, "active") is None and _manifest(settings, "complete") is None
    manifest = _manifest(settings, "idle")
    assert manifest["received_ranges"] == [[0, 99], [500, 599]]
    assert manifest["total"] == 1000 and manifest["owner"] == "alice" and manifest["state"] == "uploading"
    persisted_at = float(redis_db.hget(upload_key("idle"), "persisted_at"))
    assert manifest["persisted_at"] == persisted_at and persisted_at >= now - 1
    assert redis_db.hget(upload_key("active"), "persisted_at") is None


def test_persist_skips_unchanged_uploads_and_rewrites_changed_ones(run, settings, redis_db):
    now = time.time()
    later = now + 3600  # the jobs below run "an hour later", so everything is idle then

    async def scenario(env: Env):
        await env.put("u", 0, 99, 1000, now=now - 600)
        first = await maintenance.persist(env.repo, env.storage, 300, 60, env.enqueued, now=later)
        mtime = (settings.staging_dir / "u" / "manifest.json").stat().st_mtime_ns
        second = await maintenance.persist(env.repo, env.storage, 300, 60, env.enqueued, now=later)
        assert (settings.staging_dir / "u" / "manifest.json").stat().st_mtime_ns == mtime
        # New activity after the manifest: persisted again, with the new chunk.
        await env.put("u", 100, 199, 1000, now=time.time() + 1)
        third = await maintenance.persist(env.repo, env.storage, 300, 60, env.enqueued, now=later)
        return first, second, third

    first, second, third = run(scenario)
    assert first.persisted == ["u"] and second.persisted == [] and third.persisted == ["u"]
    assert _manifest(settings, "u")["received_ranges"] == [[0, 199]]


def test_persist_re_enqueues_assemblies_whose_lease_lapsed(run, settings, redis_db):
    now = time.time()

    async def scenario(env: Env):
        await env.put("orphan", 0, 99, 100, now=now - 300)  # assembling, nobody holds the lease
        await env.put("running", 0, 99, 100, now=now - 300)  # assembling, a live worker holds it
        await env.put("recent", 0, 99, 100, now=now - 5)  # just became assembling: give it time
        await env.repo.redis.set(assembly_lock_key("running"), "someone", px=60_000)
        report = await maintenance.persist(
            env.repo, env.storage, idle_for=300, assembly_grace=60, enqueue=env.enqueued, now=now
        )
        return report, list(env.enqueued)

    report, enqueued = run(scenario)
    assert report.requeued == ["orphan"] and enqueued == ["orphan"]
    assert report.persisted == []  # assembling uploads get their manifest from the service itself


def test_persist_is_exclusive(run, settings):
    now = time.time()

    async def scenario(env: Env):
        await env.put("u", 0, 9, 100, now=now - 600)
        async with maintenance.job_lock(env.repo, "persist"):
            with pytest.raises(maintenance.JobBusy):
                await maintenance.persist(env.repo, env.storage, 300, 60, env.enqueued, now=now)
        assert (await env.repo.get("u")).persisted_at is None
        return await maintenance.persist(env.repo, env.storage, 300, 60, env.enqueued, now=now)

    assert run(scenario).persisted == ["u"]


def test_concurrent_persist_runs_one_at_a_time(run, settings):
    """Several runs started together: exactly one does the work, the others are refused."""
    now = time.time()

    async def scenario(env: Env):
        for i in range(30):
            await env.put(f"u{i}", 0, 9, 100, now=now - 600)
        clients = [aioredis.Redis.from_url(settings.redis_url) for _ in range(5)]
        try:
            repos = [UploadRepository(c) for c in clients]

            async def one(repo):
                try:
                    return await maintenance.persist(repo, env.storage, 300, 60, env.enqueued, now=now)
                except maintenance.JobBusy:
                    return None

            return await asyncio.gather(*(one(r) for r in repos))
        finally:
            for c in clients:
                await c.aclose()

    results = run(scenario)
    done = [r for r in results if r is not None]
    persisted = [f for r in done for f in r.persisted]
    assert len(persisted) == len(set(persisted)) == 30, "an upload was persisted twice concurrently"
    assert len(done) < len(results)  # at least one run found the lock taken
