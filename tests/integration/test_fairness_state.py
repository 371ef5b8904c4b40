"""Resource fairness against a real redis-server and a real data directory: disk reservations,
an assembly the broker would not take, per-user quotas and the creation rate, chunk counts.

Each test gets a clean database 1 on the test-owned server (fixture `redis_db`).
"""

from __future__ import annotations

import asyncio
import time
import zlib

import pytest
import redis.asyncio as aioredis
from kombu.exceptions import OperationalError

from core import maintenance
from core.chunk_header import encode_header
from core.errors import InsufficientStorage
from core.state import DISK_RESERVED_KEY, NO_LIMITS, Chunk, UploadLimits, UploadRepository, quota_key
from core.storage import Storage
from core.uploads import MAX_MISSING_RANGES, ChunkRequest, UploadService
from core.users import UserStore
from tests.support import Enqueued

MiB = 1024 * 1024


class Env:
    """An UploadService on database 1 and a scratch data dir, and users to send chunks as."""

    def __init__(self, settings, client, enqueue=None) -> None:
        self.settings = settings
        self.repo = UploadRepository(client)
        self.storage = Storage(settings)
        self.service = UploadService(settings, self.repo, self.storage, enqueue)
        self.users = UserStore(settings.users_db)

    def user(self, name: str = "alice", role: str = "user"):
        if self.users.get(name) is None:
            self.users.set(name, "pw", role)
        return self.users.get(name)

    async def send(self, user, file_id: str, payload: bytes, start: int, total: int):
        """One chunk through the service, as the router hands it over."""
        end = start + len(payload) - 1
        body = encode_header(start, end, zlib.crc32(payload)) + payload

        async def stream():
            yield body

        request = ChunkRequest(f"bytes {start}-{end}/{total}", str(len(body)))
        return await self.service.receive_chunk(user, file_id, request, stream())


@pytest.fixture
def run(settings, redis_db):
    """run(fn, **settings_changes): await fn(env) on a fresh event loop and connection."""

    def runner(fn, enqueue=None, **changes):
        async def main():
            client = aioredis.Redis.from_url(settings.redis_url)
            try:
                return await fn(Env(settings.model_copy(update=changes), client, enqueue))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


# --- disk reservations -----------------------------------------------------------------------


def test_disk_reservations_count_other_chunks_until_released_or_lapsed(run, redis_db):
    async def scenario(env: Env):
        repo, now = env.repo, 1000.0
        assert await repo.reserve_disk("a", 4 * MiB, 60, now=now) == 0
        assert await repo.reserve_disk("b", 2 * MiB, 60, now=now) == 4 * MiB
        assert await repo.reserve_disk("c", 1, 60, now=now) == 6 * MiB
        await repo.release_disk("b")
        assert await repo.reserve_disk("d", 1, 60, now=now) == 4 * MiB + 1
        # A hold whose chunk's process died lapses with its lease: `a` and `c` were taken at 1000.
        assert await repo.reserve_disk("e", 1, 60, now=now + 61) == 0
        return await repo.redis.hkeys(DISK_RESERVED_KEY)

    assert sorted(run(scenario)) == [b"e"]


def test_the_held_bytes_count_stays_the_sum_of_the_holds(run, redis_db):
    """What a claim is told others hold is a running count (not a walk over every hold): after
    holds placed again under the same token, released, committed, lapsed and swept, it is still
    the sum of the holds that remain; a hold an earlier release left without a lease is removed
    without taking the count below zero."""

    async def scenario(env: Env):
        repo, now = env.repo, time.time()
        await repo.redis.hset(DISK_RESERVED_KEY, "legacy", f"7:{now + 60}")  # no lease entry, no count
        await repo.reserve_disk("a", 100, 60, now=now)
        await repo.reserve_disk("a", 300, 60, now=now)  # placed again: replaces, does not add
        await repo.reserve_disk("b", 50, 1, now=now)  # lapses
        for i in range(3):
            claimed = await repo.claim(f"u{i}", "alice", False, 0, 9, 10, 1, f"t{i}", 60, True, disk_bytes=10)
            assert claimed.outcome == "claimed"
        await repo.commit("u0", "t0", Chunk(0, 9, 1), None, None)
        assert await repo.release("u1", "t1")
        await repo.release_disk("legacy")
        assert await repo.reserve_disk("c", 1, 60, now=now + 5) == 300 + 10  # b swept: a and t2 remain
        holds = await repo.redis.hgetall(DISK_RESERVED_KEY)
        total = int(await repo.redis.get(DISK_RESERVED_KEY + ":total"))
        return sorted(holds), sum(int(v.split(b":")[0]) for v in holds.values()), total

    tokens, summed, counted = run(scenario)
    assert tokens == [b"a", b"c", b"t2"] and summed == counted == 300 + 10 + 1


def test_renewing_a_claim_renews_its_disk_reservation(run, redis_db):
    async def scenario(env: Env):
        repo, now = env.repo, time.time()
        claimed = await repo.claim("f", "alice", False, 0, 9, 10, 1, "tok", 1, True, now=now)
        assert claimed.outcome == "claimed"
        await repo.reserve_disk("tok", 4096, 1, now=now)
        assert await repo.renew("f", "tok", 3600)
        # Without the renewal, the hold would have lapsed at now + 1.
        return await repo.reserve_disk("other", 1, 60, now=now + 120)

    assert run(scenario) == 4096


def test_a_chunk_that_would_cross_the_free_space_floor_is_507_and_holds_nothing(run, redis_db):
    async def scenario(env: Env):
        user = env.user()
        free = env.storage.free_bytes()
        # Other chunks already hold all but 1 MiB above the floor: a 2 MiB chunk does not fit.
        await env.repo.reserve_disk("others", free - MiB, 60)
        with pytest.raises(InsufficientStorage):
            await env.send(user, "full", b"x" * (2 * MiB), 0, 4 * MiB)
        held, upload = await env.repo.redis.hkeys(DISK_RESERVED_KEY), await env.repo.get("full")
        await env.repo.release_disk("others")
        receipt = await env.send(user, "full", b"x" * (2 * MiB), 0, 4 * MiB)
        return held, upload, receipt, await env.repo.redis.hlen(DISK_RESERVED_KEY)

    held, upload_after_refusal, receipt, held_after = run(scenario, min_free_bytes=0)
    assert held == [b"others"]
    assert receipt.received_bytes == 2 * MiB and held_after == 0
    assert upload_after_refusal is None  # a refused first chunk takes its new upload with it (release)


# --- an assembly the broker refused ----------------------------------------------------------


def test_last_chunk_stored_but_broker_refusing_is_200_and_persist_queues_the_assembly(run, redis_db):
    """A full disk may make the broker (Redis) refuse writes after the last chunk was stored.
    The chunk is stored and the upload `assembling`: the client is told so (200), and the
    persist job, which enqueues assemblies nobody runs, starts it."""
    queued = Enqueued()

    async def refusing_broker(file_id: str) -> None:
        raise OperationalError(
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"
        )

    async def scenario(env: Env):
        receipt = await env.send(env.user(), "last", b"y" * 1000, 0, 1000)
        report = await maintenance.persist(
            env.repo, env.storage, idle_for=300, assembly_grace=0, enqueue=queued, now=time.time() + 1
        )
        return receipt, report

    receipt, report = run(scenario, enqueue=refusing_broker)
    assert (receipt.state, receipt.received_bytes) == ("assembling", 1000)
    assert report.requeued == ["last"] and queued == ["last"]


# --- per-user limits on open uploads ---------------------------------------------------------

LIMITS = UploadLimits(max_open_uploads=3, max_open_bytes=1000, creates_per_minute=0)


def test_open_upload_counts_uploads_and_declared_bytes_and_refuses_past_the_limits(run, redis_db):
    async def scenario(env: Env):
        repo, outcomes = env.repo, []
        for file_id, total in (("a", 100), ("b", 800), ("a", 100), ("c", 200), ("c", 100), ("d", 1)):
            outcomes.append((await repo.open_upload(file_id, "alice", total, LIMITS)).outcome)
        outcomes.append((await repo.open_upload("e", "alice", 1, LIMITS)).outcome)
        other = (await repo.open_upload("x", "bob", 1000, LIMITS)).outcome
        return outcomes, await repo.open_uploads_of("alice"), other, await repo.get("c"), await repo.get("a")

    outcomes, counted, other, refused, created = run(scenario)
    # c (200 bytes) would pass 1000 declared bytes; c again at 100 fits; then the third upload is the last
    assert outcomes == [
        "created",
        "created",
        "exists",
        "quota_exceeded",
        "created",
        "too_many_uploads",
        "too_many_uploads",
    ]
    assert counted == (3, 1000) and other == "created"
    assert refused is not None and refused.total == 100  # the second try created it
    assert created.owner == "alice" and created.state == "uploading" and not created.provisional


def test_quota_refusal_says_how_many_bytes_are_left(run, redis_db):
    async def scenario(env: Env):
        await env.repo.open_upload("a", "alice", 700, LIMITS)
        return await env.repo.open_upload("b", "alice", 301, LIMITS)

    refused = run(scenario)
    assert (refused.outcome, refused.extra) == ("quota_exceeded", "300")


def test_parallel_creations_never_pass_the_limit(run, redis_db):
    async def scenario(env: Env):
        limits = UploadLimits(max_open_uploads=10)
        replies = await asyncio.gather(*(env.repo.open_upload(f"p{i}", "alice", 1, limits) for i in range(60)))
        return [r.outcome for r in replies], await env.repo.open_uploads_of("alice")

    outcomes, counted = run(scenario)
    assert outcomes.count("created") == 10 and outcomes.count("too_many_uploads") == 50
    assert counted == (10, 10)


def test_creation_rate_is_a_bucket_refilled_over_a_minute(run, redis_db):
    async def scenario(env: Env):
        limits, now, outcomes = UploadLimits(creates_per_minute=6), 1000.0, []
        for i in range(7):
            outcomes.append(await env.repo.open_upload(f"r{i}", "alice", 1, limits, now=now))
        later = await env.repo.open_upload("r7", "alice", 1, limits, now=now + 10)  # one refilled
        again = await env.repo.open_upload("r8", "alice", 1, limits, now=now + 10)
        other = await env.repo.open_upload("o", "bob", 1, limits, now=now)
        return outcomes, later, again, other, await env.repo.open_uploads_of("alice")

    outcomes, later, again, other, counted = run(scenario)
    assert [o.outcome for o in outcomes] == ["created"] * 6 + ["rate_limited"]
    assert outcomes[-1].extra == "10"  # one creation per 10 s at 6 a minute
    assert later.outcome == "created" and again.outcome == "rate_limited" and other.outcome == "created"
    assert counted == (7, 7)  # refusals counted nothing


def test_first_chunk_claim_creates_within_the_limits(run, redis_db):
    async def scenario(env: Env):
        repo = env.repo
        first = await repo.claim(
            "a", "alice", False, 0, 9, 10, 1, "t1", 60, True, limits=UploadLimits(max_open_uploads=1)
        )
        second = await repo.claim(
            "b", "alice", False, 0, 9, 10, 1, "t2", 60, True, limits=UploadLimits(max_open_uploads=1)
        )
        return first, second, await repo.get("b"), await repo.open_uploads_of("alice")

    first, second, absent, counted = run(scenario)
    assert first.outcome == "claimed" and second.outcome == "too_many_uploads" and second.extra == "1"
    assert absent is None and counted == (1, 10)


def test_every_way_an_upload_ends_gives_its_count_back_once(run, redis_db, settings):
    async def scenario(env: Env):
        repo, now = env.repo, time.time()
        for file_id in ("done", "deleted", "stale", "failed-first", "failed"):
            await repo.open_upload(file_id, "alice", 100, NO_LIMITS, provisional=file_id == "failed-first", now=now)
        counts = [await repo.open_uploads_of("alice")]
        await repo.transition("done", "uploading", state="assembling")
        await repo.transition("done", "assembling", state="complete")
        await repo.transition("done", "complete", state="complete")  # again: already uncharged
        counts.append(await repo.open_uploads_of("alice"))
        await repo.tombstone("deleted")
        await repo.tombstone("deleted")
        counts.append(await repo.open_uploads_of("alice"))
        assert await repo.expire_if_stale("stale", cutoff=now + 1) == "expired"
        counts.append(await repo.open_uploads_of("alice"))
        claim = await repo.claim("failed-first", "alice", False, 0, 9, 100, 1, "tok", 60, False)
        assert claim.outcome == "claimed"
        assert await repo.release("failed-first", "tok")  # a first chunk failed: the upload goes
        counts.append(await repo.open_uploads_of("alice"))
        await repo.transition("failed", "uploading", state="failed", error="x")  # failed still holds bytes
        counts.append(await repo.open_uploads_of("alice"))
        await repo.tombstone("failed")
        counts.append(await repo.open_uploads_of("alice"))
        return counts, await repo.redis.exists(quota_key("alice"))

    counts, quota_left = run(scenario)
    assert counts == [(5, 500), (4, 400), (3, 300), (2, 200), (1, 100), (1, 100), (0, 0)]
    assert quota_left == 0


def test_restored_uploads_are_counted_again_and_counts_never_go_below_zero(run, redis_db, settings):
    async def scenario(env: Env):
        repo = env.repo
        owner = env.user().owner_id
        await env.send(env.user(), "kept", b"k" * 100, 0, 1000)
        env.service.write_manifest(await repo.get("kept"), await repo.chunks("kept"))
        await repo.redis.flushdb()  # Redis lost everything; the manifest survived
        assert await env.service.restore_from_disk("kept")
        restored = await repo.open_uploads_of(owner)
        await repo.redis.delete(quota_key(owner))  # counters lost, the upload kept
        await repo.tombstone("kept")
        return restored, await repo.open_uploads_of(owner)

    restored, after = run(scenario)
    assert restored == (1, 1000)
    assert after == (0, 0)


# --- how finely an upload may be cut -----------------------------------------------------------


def test_past_max_chunks_an_upload_takes_chunks_only_while_they_average_the_minimum(run, redis_db):
    limits = UploadLimits(max_chunks=4, min_average_chunk_bytes=100)

    async def scenario(env: Env):
        repo, outcomes = env.repo, []

        async def put(start: int, end: int) -> str:
            token = f"t{start}"
            claimed = await repo.claim("f", "alice", False, start, end, 10_000, 7, token, 60, True, limits=limits)
            if claimed.outcome == "claimed":
                await repo.commit("f", token, Chunk(start, end, 7), None, None)
            return claimed.outcome if claimed.outcome != "too_many_chunks" else f"too_many_chunks:{claimed.extra}"

        for start in range(0, 10, 2):  # one-byte chunks: four are fine, the fifth is not
            outcomes.append(await put(start, start))
        outcomes.append(await put(100, 599))  # 5 chunks, 504 bytes: average 100.8
        outcomes.append(await put(1000, 1000))  # 6 chunks, 505 bytes: average 84
        return outcomes

    assert run(scenario) == ["claimed"] * 4 + ["too_many_chunks:4", "claimed", "too_many_chunks:4"]


def test_status_lists_the_first_1000_gaps_and_says_there_are_more(run, redis_db):
    async def scenario(env: Env):
        user, repo = env.user(), env.repo
        for i in range(1200):  # one-byte chunks at even offsets: 1200 gaps
            start = 2 * i + 1
            assert (
                await repo.claim("g", user.owner_id, False, start, start, 2401, 7, f"t{i}", 60, True)
            ).outcome == "claimed"
            await repo.commit("g", f"t{i}", Chunk(start, start, 7), None, None)
        many = await env.service.status(user, "g")
        await env.send(user, "h", b"x" * 10, 0, 20)
        few = await env.service.status(user, "h")
        return many.model_dump(), few.model_dump()

    many, few = run(scenario)
    assert len(many["missing_ranges"]) == MAX_MISSING_RANGES == 1000
    assert many["missing_ranges"][:2] == [[0, 0], [2, 2]] and many["missing_ranges"][-1] == [1998, 1998]
    assert many["missing_ranges_truncated"] is True and many["received_bytes"] == 1200
    assert few["missing_ranges"] == [[10, 19]] and few["missing_ranges_truncated"] is False


def test_chunks_in_flight_count_with_their_bytes(run, redis_db):
    """Parallel chunks of exactly the minimum average never meet the limit."""
    limits = UploadLimits(max_chunks=2, min_average_chunk_bytes=100)

    async def scenario(env: Env):
        outcomes = []
        for i in range(4):  # four claims in flight at once, 100 bytes each
            claimed = await env.repo.claim(
                "p", "alice", False, 100 * i, 100 * i + 99, 1000, 7, f"t{i}", 60, True, limits=limits
            )
            outcomes.append(claimed.outcome)
        small = await env.repo.claim("p", "alice", False, 400, 400, 1000, 7, "t-small", 60, True, limits=limits)
        return outcomes, small.outcome

    assert run(scenario) == (["claimed"] * 4, "too_many_chunks")


def test_an_empty_upload_is_uncharged_too(run, redis_db, settings):
    """Its charge is 0 bytes: Redis refuses '-0' as an integer, so deleting it answered 500."""

    async def scenario(env: Env):
        repo = env.repo
        assert (await repo.open_upload("empty", "alice", 0, NO_LIMITS)).outcome == "created"
        counted = await repo.open_uploads_of("alice")
        assert await repo.tombstone("empty") == "uploading"
        return counted, await repo.open_uploads_of("alice")

    assert run(scenario) == ((1, 0), (0, 0))


def test_a_claim_holds_its_disk_space_until_its_commit_or_release(run, redis_db):
    """The claim script places the chunk's disk hold in the same round trip; committing or
    releasing the chunk (or committing after its claim was lost) lets go of it."""

    async def scenario(env: Env):
        repo, now, seen = env.repo, time.time(), []
        await repo.reserve_disk("other", 100, 60, now=now)
        claimed = await repo.claim("f", "alice", False, 0, 9, 30, 1, "a", 60, True, now=now, disk_bytes=4096)
        seen.append((claimed.outcome, claimed.extra))  # the bytes others hold: "other"'s 100
        await repo.claim("f", "alice", False, 10, 19, 30, 1, "b", 60, True, now=now, disk_bytes=8192)
        seen.append(sorted(await repo.redis.hkeys(DISK_RESERVED_KEY)))
        await repo.commit("f", "a", Chunk(0, 9, 1), None, None)
        await repo.release("f", "b")
        seen.append(sorted(await repo.redis.hkeys(DISK_RESERVED_KEY)))
        # A claim that lapsed and lost its range: the late commit answers `lost`, holding nothing.
        await repo.claim("f", "alice", False, 20, 29, 30, 1, "late", 1, False, now=now - 5, disk_bytes=4096)
        await repo.claim("f", "alice", False, 20, 29, 30, 1, "c", 60, False, now=now)
        lost = await repo.commit("f", "late", Chunk(20, 29, 1), None, None)
        seen.append((lost.outcome, sorted(await repo.redis.hkeys(DISK_RESERVED_KEY))))
        duplicate = await repo.claim("f", "alice", False, 0, 9, 30, 1, "d", 60, False, disk_bytes=4096)
        seen.append((duplicate.outcome, sorted(await repo.redis.hkeys(DISK_RESERVED_KEY))))
        return seen

    assert run(scenario) == [
        ("claimed", "100"),
        [b"a", b"b", b"other"],
        [b"other"],
        ("lost", [b"other"]),
        ("duplicate", [b"other"]),  # a retransmission writes nothing: no hold
    ]


# --- a new upload's first chunk --------------------------------------------------------------


def evalsha_calls(redis_db) -> int:
    return int(redis_db.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_first_chunk_at_byte_0_creates_its_upload_in_its_claim(run, redis_db):
    """Nothing on disk and the chunk at byte 0: claim (creating) and commit, two scripts; a
    first chunk elsewhere asks first (absent), then creates: three."""

    async def scenario(env: Env) -> list[int]:
        await env.send(env.user(), "warm", b"w" * 10, 0, 20)  # the scripts loaded
        counts = []
        for file_id, start in (("at-zero", 0), ("elsewhere", 10)):
            before = evalsha_calls(redis_db)
            receipt = await env.send(env.user(), file_id, b"x" * 10, start, 20)
            assert (receipt.state, receipt.received_bytes) == ("uploading", 10)
            counts.append(evalsha_calls(redis_db) - before)
        return counts

    assert run(scenario) == [2, 3]


def test_a_chunk_at_byte_0_of_an_upload_redis_lost_restores_it_first(run, redis_db):
    """Its manifest on disk: the upload comes back from it (with the bytes it had) before the
    chunk is claimed, as for any other chunk; never created afresh over it."""

    async def before_the_loss(env: Env) -> None:
        await env.send(env.user(), "lost", b"b" * 10, 10, 20)
        upload = await env.repo.get("lost")
        assert upload is not None
        env.service.write_manifest(upload, await env.repo.chunks("lost"))

    run(before_the_loss)
    redis_db.flushdb()

    async def after_the_loss(env: Env):
        return await env.send(env.user(), "lost", b"a" * 10, 0, 20)

    receipt = run(after_the_loss)
    assert (receipt.state, receipt.received_bytes) == ("assembling", 20)
