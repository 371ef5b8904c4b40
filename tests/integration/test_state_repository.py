"""UploadRepository (core/state.py) against a real redis-server: the Lua scripts' semantics.

Each test gets a clean database 1 on the test-owned server (fixture `redis_db`).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import pytest
import redis.asyncio as aioredis

from core.redis_mux import SharedConnection
from core.state import ACTIVITY_KEY, ASSEMBLING_KEY, NO_LIMITS, Chunk, UploadRepository, upload_key
from core.storage import Storage
from core.uploads import UploadService
from tests.support import Enqueued

GiB = 1024**3
TiB = 1024**4
LEASE = 60.0


@pytest.fixture
def run(settings, redis_db):
    """run(fn): await fn(repo) on a fresh event loop with its own connection to database 1."""

    def runner(fn):
        async def main():
            client = aioredis.Redis.from_url(settings.redis_url)
            try:
                return await fn(UploadRepository(client))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


async def put(
    repo: UploadRepository,
    file_id: str,
    start: int,
    end: int,
    total: int,
    *,
    user="alice",
    crc: int | None = None,
    now: float | None = None,
    name=None,
    sha=None,
):
    """Claim and commit one chunk, as the upload service does; returns the commit's Progress."""
    chunk = Chunk(start, end, crc if crc is not None else zlib.crc32(f"{start}-{end}".encode()))
    token = f"t-{start}-{end}-{time.monotonic_ns()}"
    claimed = await repo.claim(file_id, user, False, start, end, total, chunk.crc32, token, LEASE, True, now=now)
    assert claimed.outcome == "claimed", claimed
    return await repo.commit(file_id, token, chunk, name, sha, now=now)


def test_first_claim_creates_a_provisional_upload_and_commit_makes_it_real(run, redis_db):
    async def scenario(repo):
        absent = await repo.claim("f1", "alice", False, 0, 9, 100, 1, "tok", LEASE, create=False)
        assert absent.outcome == "absent"
        assert await repo.get("f1") is None
        claimed = await repo.claim("f1", "alice", False, 0, 9, 100, 1, "tok", LEASE, create=True, now=1000.0)
        assert (claimed.outcome, claimed.state, claimed.received, claimed.total) == ("claimed", "uploading", 0, 100)
        up = await repo.get("f1")
        assert up.owner == "alice" and up.provisional and up.created_at == 1000.0
        done = await repo.commit("f1", "tok", Chunk(0, 9, 1), "name.bin", "ab" * 32, now=1001.0)
        assert (done.outcome, done.received, done.next_expected) == ("committed", 10, 10)
        up = await repo.get("f1")
        assert not up.provisional
        assert up.file_name == "name.bin" and up.expected_sha256 == "ab" * 32 and up.updated_at == 1001.0
        # Name and digest are remembered from the first chunk that has them.
        await put(repo, "f1", 10, 19, 100, name="other.bin", sha="cd" * 32)
        up = await repo.get("f1")
        assert up.file_name == "name.bin" and up.expected_sha256 == "ab" * 32
        # Someone else does not see it (but an admin does), and a different total is refused.
        assert (await repo.claim("f1", "bob", False, 20, 29, 100, 1, "x", LEASE, True)).outcome == "not_found"
        assert (await repo.claim("f1", "root", True, 20, 29, 100, 1, "x", LEASE, True)).outcome == "claimed"
        assert (await repo.claim("f1", "alice", False, 30, 39, 101, 1, "y", LEASE, True)).outcome == "total_mismatch"

    run(scenario)
    assert redis_db.zscore(ACTIVITY_KEY, "f1") is not None


def test_concurrent_claims_of_one_range_only_one_wins(run, settings):
    async def scenario(repo):
        await put(repo, "f", 0, 99, 10_000)
        # Many connections race for the same range, and for ranges overlapping it.
        clients = [aioredis.Redis.from_url(settings.redis_url) for _ in range(16)]
        try:
            repos = [UploadRepository(c) for c in clients]
            same = [
                r.claim("f", "alice", False, 100, 199, 10_000, 7, f"same-{i}", LEASE, True) for i, r in enumerate(repos)
            ]
            results = await asyncio.gather(*same)
            assert sorted(p.outcome for p in results) == ["claimed"] + ["overlap"] * 15
            shifted = [
                r.claim("f", "alice", False, 150 + i, 250 + i, 10_000, 7, f"shift-{i}", LEASE, True)
                for i, r in enumerate(repos)
            ]
            assert {p.outcome for p in await asyncio.gather(*shifted)} == {"overlap"}
            # Disjoint ranges claimed concurrently all succeed.
            disjoint = [
                r.claim("f", "alice", False, 1000 + 100 * i, 1099 + 100 * i, 10_000, 7, f"d-{i}", LEASE, True)
                for i, r in enumerate(repos)
            ]
            assert {p.outcome for p in await asyncio.gather(*disjoint)} == {"claimed"}
        finally:
            for c in clients:
                await c.aclose()
        held = [t for t in [f"same-{i}" for i in range(16)] if await repo.redis.hget("ft:up:f:claims", t)]
        assert len(held) == 1
        winner = held[0]
        assert (await repo.commit("f", winner, Chunk(100, 199, 7), None, None)).outcome == "committed"

    run(scenario)


def test_concurrent_first_chunks_create_the_upload_once(run, settings):
    async def scenario(repo):
        clients = [aioredis.Redis.from_url(settings.redis_url) for _ in range(8)]
        try:
            claims = [
                UploadRepository(c).claim("new", "alice", False, 100 * i, 100 * i + 99, 800, i, f"t{i}", LEASE, True)
                for i, c in enumerate(clients)
            ]
            assert {p.outcome for p in await asyncio.gather(*claims)} == {"claimed"}
        finally:
            for c in clients:
                await c.aclose()
        for i in range(8):
            p = await repo.commit("new", f"t{i}", Chunk(100 * i, 100 * i + 99, i), None, None)
            assert p.outcome == "committed"
        assert p.state == "assembling" and p.received == 800 and p.next_expected == 800

    run(scenario)


def test_overlap_duplicate_and_adjacent(run):
    async def scenario(repo):
        await put(repo, "f", 100, 199, 1000, crc=42)
        again = await repo.claim("f", "alice", False, 100, 199, 1000, 42, "t", LEASE, True)
        assert again.outcome == "duplicate" and again.received == 100
        assert await repo.redis.hlen("ft:up:f:claims") == 0  # a duplicate holds no claim
        # Same range with another CRC, partial overlaps on either side, inside, around.
        for s, e, crc in [(100, 199, 43), (50, 100, 1), (199, 250, 1), (120, 130, 1), (0, 999, 1)]:
            p = await repo.claim("f", "alice", False, s, e, 1000, crc, "t", LEASE, True)
            assert p.outcome == "overlap", (s, e, p)
        for s, e in [(0, 99), (200, 299)]:
            assert (await repo.claim("f", "alice", False, s, e, 1000, 1, f"t{s}", LEASE, True)).outcome == "claimed"
        # In-flight claims block overlapping claims as well.
        assert (await repo.claim("f", "alice", False, 250, 260, 1000, 1, "x", LEASE, True)).outcome == "overlap"

    run(scenario)


def test_expired_lease_lets_a_new_claim_in_and_the_old_commit_is_lost(run):
    async def scenario(repo):
        t0 = 5_000_000.0
        await put(repo, "f", 0, 9, 1000, now=t0)
        assert (await repo.claim("f", "alice", False, 10, 19, 1000, 1, "old", 2.0, True, now=t0)).outcome == "claimed"
        # Still within the lease: refused.
        assert (
            await repo.claim("f", "alice", False, 10, 19, 1000, 1, "new", 2.0, True, now=t0 + 1.9)
        ).outcome == "overlap"
        # Lease over: the new writer gets it, and the old writer's commit is refused.
        assert (
            await repo.claim("f", "alice", False, 10, 19, 1000, 1, "new", 2.0, True, now=t0 + 2.1)
        ).outcome == "claimed"
        assert (await repo.commit("f", "old", Chunk(10, 19, 1), None, None)).outcome == "lost"
        assert not await repo.renew("f", "old", 60)
        p = await repo.commit("f", "new", Chunk(10, 19, 1), None, None)
        assert (p.outcome, p.received, p.next_expected) == ("committed", 20, 20)

    run(scenario)


def test_renew_extends_the_lease(run):
    async def scenario(repo):
        now = time.time()
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 1, "w", 1.0, True, now=now)).outcome == "claimed"
        assert await repo.renew("f", "w", 120.0)
        # Past the original lease, but within the renewed one.
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 1, "x", 1.0, True, now=now + 30)).outcome == "overlap"
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 1, "x", 1.0, True, now=now + 200)).outcome == "claimed"
        assert not await repo.renew("f", "nobody", 120.0)

    run(scenario)


def test_release_drops_a_provisional_upload_only_when_nothing_is_left(run, redis_db):
    async def scenario(repo):
        assert (await repo.claim("p", "alice", False, 0, 9, 100, 1, "a", LEASE, True)).outcome == "claimed"
        assert (await repo.claim("p", "alice", False, 10, 19, 100, 1, "b", LEASE, True)).outcome == "claimed"
        assert not await repo.release("p", "a")  # "b" is still in flight
        assert await repo.get("p") is not None
        assert await repo.release("p", "b")
        assert await repo.get("p") is None
        # A committed chunk makes the upload real: releasing a later failed chunk keeps it.
        await put(repo, "q", 0, 9, 100)
        assert (await repo.claim("q", "alice", False, 10, 19, 100, 1, "c", LEASE, True)).outcome == "claimed"
        assert not await repo.release("q", "c")
        up = await repo.get("q")
        assert up is not None and up.received == 10
        assert (await repo.claim("q", "alice", False, 10, 19, 100, 1, "d", LEASE, True)).outcome == "claimed"

    run(scenario)
    assert redis_db.zscore(ACTIVITY_KEY, "p") is None
    assert not redis_db.exists(upload_key("p"), upload_key("p") + ":chunks", upload_key("p") + ":claims")
    assert redis_db.zscore(ACTIVITY_KEY, "q") is not None


def test_next_expected_advances_over_out_of_order_chunks(run, redis_db):
    async def scenario(repo):
        seen = []
        for s in (300, 100, 400, 200, 0, 500, 700, 600):
            p = await put(repo, "f", s, s + 99, 800, now=100.0 + s)
            seen.append((p.next_expected, p.state))
        return seen

    seen = run(scenario)
    assert seen == [
        (0, "uploading"),
        (0, "uploading"),
        (0, "uploading"),
        (0, "uploading"),
        (500, "uploading"),
        (600, "uploading"),
        (600, "uploading"),
        (800, "assembling"),
    ]
    assert redis_db.zscore(ASSEMBLING_KEY, "f") == 700.0  # the last commit's `now`


@pytest.mark.parametrize("total", [2**33 + 7, TiB - 1, TiB])
def test_large_offsets_round_trip_exactly(run, redis_db, total):
    """Offsets above 2^32 and near 1 TiB: Lua numbers must not come back as floats like 1.0995e+12."""
    chunk = 64 * 1024 * 1024 + 1

    async def scenario(repo):
        tail = Chunk(total - chunk, total - 1, 0xFFFFFFFF)
        mid = Chunk(2**32 - 5, 2**32 + 2 * chunk, 123)
        head = Chunk(0, 2**32 - 6, 9)  # one chunk of 4 GiB: only counters, nothing is written here
        for c in (tail, mid):
            p = await put(repo, "big", c.start, c.end, total, crc=c.crc32)
            assert p.next_expected == 0
        p = await put(repo, "big", head.start, head.end, total, crc=head.crc32)
        assert p.next_expected == mid.end + 1, p
        assert p.received == head.end + 1 + (mid.end - mid.start + 1) + chunk
        assert sorted(await repo.chunks("big"), key=lambda c: c.start) == [head, mid, tail]
        # Claims near the end are judged with exact numbers too.
        assert (
            await repo.claim("big", "alice", False, total - chunk - 1, total - chunk, total, 1, "x", LEASE, True)
        ).outcome == "overlap"
        p = await repo.claim("big", "alice", False, total - chunk - 1, total - chunk - 1, total, 1, "y", LEASE, True)
        assert p.outcome == "claimed"
        p = await repo.commit("big", "y", Chunk(total - chunk - 1, total - chunk - 1, 1), None, None)
        assert p.received == head.end + 1 + (mid.end - mid.start + 1) + chunk + 1
        up = await repo.get("big")
        assert (up.total, up.next_expected) == (total, mid.end + 1)
        return up

    run(scenario)
    raw = redis_db.hgetall(upload_key("big"))
    for name in (b"total", b"received", b"next"):
        assert raw[name].isdigit(), (name, raw[name])  # no "1.0995116277760e+12", no ".0"
    members = redis_db.zrange(upload_key("big") + ":chunks", 0, -1)
    assert all(m.split(b":")[0].isdigit() and m.split(b":")[1].isdigit() for m in members)


def test_a_one_tib_upload_completes_with_exact_counters(run, redis_db):
    async def scenario(repo):
        half = TiB // 2
        await put(repo, "t", half, TiB - 1, TiB)
        return await put(repo, "t", 0, half - 1, TiB)

    p = run(scenario)
    assert (p.state, p.received, p.next_expected, p.total) == ("assembling", TiB, TiB, TiB)
    assert redis_db.hget(upload_key("t"), "next") == str(TiB).encode()


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_idle_since_pages_while_entries_are_deleted(run, redis_db, batch):
    """Paging by score with ties spanning pages, removing every yielded entry as we go."""
    entries = {}
    for i in range(400):
        entries[f"u{i:03d}"] = float(1000 + i // 60)  # runs of 60 equal scores
    entries.update({f"late{i}": 5000.0 + i for i in range(20)})  # after the cutoff
    entries.update({f"frac{i}": 1003.25 + i * 1e-6 for i in range(5)})  # non-integral scores
    redis_db.zadd(ACTIVITY_KEY, entries)
    expected = {k for k, v in entries.items() if v <= 4999.0}

    async def scenario(repo):
        yielded = []
        async for file_id in repo.idle_since(4999.0, batch=batch):
            yielded.append(file_id)
            await repo.redis.zrem(ACTIVITY_KEY, file_id)
        return yielded

    yielded = run(scenario)
    assert len(yielded) == len(set(yielded)), "an entry was yielded twice"
    assert set(yielded) == expected
    assert redis_db.zcard(ACTIVITY_KEY) == 20


def test_idle_since_without_deleting_and_with_deleting_ahead(run, redis_db):
    redis_db.zadd(ACTIVITY_KEY, {f"u{i:03d}": float(i // 10) for i in range(100)})

    async def plain(repo):
        return [f async for f in repo.idle_since(1e9, batch=8)]

    got = run(plain)
    assert sorted(got) == sorted(f"u{i:03d}" for i in range(100)) and len(got) == 100

    async def delete_others(repo):
        # Entries removed by someone else meanwhile are simply not yielded; none is skipped.
        got = []
        async for f in repo.idle_since(1e9, batch=8):
            got.append(f)
            if f == "u020":
                await repo.redis.zrem(ACTIVITY_KEY, *[f"u{i:03d}" for i in range(50, 60)])
        return got

    got = run(delete_others)
    assert set(got) == {f"u{i:03d}" for i in range(100)} - {f"u{i:03d}" for i in range(50, 60)}
    assert len(got) == len(set(got))


def _service(settings, repo, enqueued):
    return UploadService(settings, repo, Storage(settings), enqueued)


def test_restore_from_a_manifest_round_trips(run, settings, redis_db):
    total = 3 * TiB // 4 + 5
    enqueued = Enqueued()

    async def build(repo):
        service = _service(settings, repo, enqueued)
        await put(repo, "m", 0, 99, total, name="été.bin", sha="ef" * 32, now=1_000.0)
        await put(repo, "m", 2**33, 2**33 + 4095, total, now=1_010.0)
        await put(repo, "m", total - 10, total - 1, total, now=1_020.0)
        upload = await repo.get("m")
        chunks = await repo.chunks("m")
        service.storage.staging_dir("m").mkdir()  # chunks' bytes would be there
        service.write_manifest(upload, chunks, persisted_at=1_030.0)
        return upload, chunks

    before, chunks = run(build)
    redis_db.flushdb()

    async def restore(repo):
        service = _service(settings, repo, enqueued)
        assert await repo.get("m") is None
        assert await service.restore_from_disk("m")
        assert not await service.restore_from_disk("m")  # Redis knows it now: never clobbered
        assert await service.restore_from_disk("nothing-here") is False
        return await repo.get("m"), await repo.chunks("m")

    after, after_chunks = run(restore)
    assert after_chunks == chunks
    for name in (
        "owner",
        "total",
        "state",
        "received",
        "next_expected",
        "file_name",
        "expected_sha256",
        "created_at",
        "updated_at",
    ):
        assert getattr(after, name) == getattr(before, name), name
    assert after.persisted_at == 1_030.0
    assert redis_db.zscore(ACTIVITY_KEY, "m") == 1_020.0
    assert enqueued == []

    async def resume(repo):
        p = await put(repo, "m", 100, 2**33 - 1, total)
        assert p.next_expected == 2**33 + 4096
        return p

    run(resume)


def test_restore_of_an_assembling_manifest_re_enqueues_the_assembly(run, settings, redis_db):
    enqueued = Enqueued()

    async def build(repo):
        await put(repo, "a", 0, 49, 100)
        await put(repo, "a", 50, 99, 100)
        up = await repo.get("a")
        assert up.state == "assembling"
        service = _service(settings, repo, enqueued)
        service.storage.staging_dir("a").mkdir()
        service.write_manifest(up, await repo.chunks("a"))

    run(build)
    redis_db.flushdb()

    async def restore(repo):
        assert await _service(settings, repo, enqueued).restore_from_disk("a")
        return await repo.get("a")

    up = run(restore)
    assert up.state == "assembling" and up.received == 100
    assert enqueued == ["a"]
    assert redis_db.zscore(ASSEMBLING_KEY, "a") is not None


def test_restore_of_a_complete_file_from_its_meta(run, settings, redis_db):
    storage = Storage(settings)
    size = 5 * GiB
    (storage.final_dir("done")).mkdir(parents=True)
    storage.final_data("done").touch()
    meta = {
        "file_id": "done",
        "owner": "alice",
        "size": size,
        "sha256": "12" * 32,
        "expected_sha256": None,
        "file_name": "x.iso",
        "created_at": 10.0,
        "completed_at": 20.0,
    }
    from core.storage import write_json_atomic

    write_json_atomic(storage.final_meta_path("done"), meta)

    async def restore(repo):
        assert await _service(settings, repo, []).restore_from_disk("done")
        return await repo.get("done")

    up = run(restore)
    assert (up.state, up.total, up.received, up.next_expected, up.sha256) == ("complete", size, size, size, "12" * 32)
    assert up.file_name == "x.iso" and up.completed_at == 20.0
    assert redis_db.zscore(ACTIVITY_KEY, "done") is None  # complete files are never "idle"


def test_reads_through_the_shared_connection_are_the_pools(settings, redis_db):
    """`get` (every tus PATCH, every status) and `upload_and_chunks` (the manifest a last chunk
    writes) read through the API's shared connection, whose replies are raw and parsed here:
    they must read what the pool's client reads."""

    async def main():
        client = aioredis.Redis.from_url(settings.redis_url)
        shared = SharedConnection(client)
        try:
            pooled, muxed = UploadRepository(client), UploadRepository(client, shared)
            await put(pooled, "f1", 0, 9, 20)
            await put(pooled, "f1", 10, 19, 20)
            expected = (await pooled.get("f1"), await pooled.chunks("f1"))
            assert expected[0] is not None and len(expected[1]) == 2
            assert await muxed.upload_and_chunks("f1") == expected
            assert await muxed.get("f1") == expected[0]
            assert await pooled.upload_and_chunks("f1") == expected
            assert await muxed.upload_and_chunks("nothing") == (None, [])
        finally:
            await shared.aclose()
            await client.aclose()

    asyncio.run(main())


def test_the_commit_that_completes_an_upload_returns_it_as_a_read_would(settings, redis_db):
    """The last chunk's manifest is written from what its commit returned (no second round trip):
    it must be what a read right after gives, through the pool and the shared connection alike;
    a commit that does not complete the upload returns none."""

    async def main():
        client = aioredis.Redis.from_url(settings.redis_url)
        shared = SharedConnection(client)
        try:
            for repo, file_id in ((UploadRepository(client), "p1"), (UploadRepository(client, shared), "s1")):
                first = await put(repo, file_id, 10, 19, 20, name="notes.txt")  # out of order
                assert first.state == "uploading" and first.snapshot is None
                last = await put(repo, file_id, 0, 9, 20)
                assert last.state == "assembling" and last.snapshot is not None
                upload, chunks = await repo.upload_and_chunks(file_id)
                assert (last.snapshot.upload, last.snapshot.chunks) == (upload, chunks)
                assert upload is not None and upload.state == "assembling" and upload.file_name == "notes.txt"
                assert [(c.start, c.end) for c in chunks] == [(0, 9), (10, 19)]
        finally:
            await shared.aclose()
            await client.aclose()

    asyncio.run(main())


def test_a_burst_of_creations_shares_the_one_connection(settings, redis_db):
    """tus creations run their script on the shared connection, as chunks do: fifty at once
    open no pooled connection each (through the pool a fleet starting up opened one per
    creation: 64 devices' creations took ~100 ms each, ~45 ms on the shared connection)."""

    async def main() -> tuple[int, list[str]]:
        client = aioredis.Redis.from_url(settings.redis_url)
        shared = SharedConnection(client)
        try:
            repo = UploadRepository(client, shared)
            before = redis_db.info("clients")["connected_clients"]
            ids = [f"c{i}" for i in range(50)]
            results = await asyncio.gather(*(repo.create(i, "alice", 100, NO_LIMITS) for i in ids))
            opened = redis_db.info("clients")["connected_clients"] - before
            assert [r.outcome for r in results] == ["created"] * 50
            uploads = [await repo.get(i) for i in ids]
            return opened, [u.state if u else "missing" for u in uploads]
        finally:
            await shared.aclose()
            await client.aclose()

    opened, states = asyncio.run(main())
    assert opened <= 1  # the shared connection itself
    assert states == ["uploading"] * 50
