"""The repository's Lua scripts (core/state.py) on fakeredis, which runs them under Lua 5.1
through `lupa`, as Redis does: claims, commits and releases, quotas, the owner indexes, cjson.

The reference is tests/integration (test_state_repository.py, test_fairness_state.py,
test_files_index.py) on a real redis-server. Every scenario there was also run against
fakeredis: all passed but the two concurrency tests, which open their own connections by URL.
"""

from __future__ import annotations

import asyncio
import dataclasses

import fakeredis
import pytest

from core.records import Manifest, TusFields, UploadState
from core.state import (
    ACTIVITY_KEY,
    ALL_FILES_KEY,
    ASSEMBLING_KEY,
    DISK_RESERVED_KEY,
    NO_LIMITS,
    Chunk,
    UploadLimits,
    UploadRepository,
    owner_files_key,
    quota_key,
    upload_key,
)

TiB = 1024**4
LEASE = 60.0
T0 = 1_000_000.0


@pytest.fixture
def run(fake_server):
    """run(scenario): await scenario(repo) on a fresh loop, with a client of the test's fake server."""

    def runner(scenario):
        async def main():
            client = fakeredis.FakeAsyncRedis(server=fake_server)
            try:
                return await scenario(UploadRepository(client))
            finally:
                await client.aclose()

        return asyncio.run(main())

    return runner


async def put(
    repo,
    file_id: str,
    start: int,
    end: int,
    total: int,
    owner: str = "alice",
    now: float = T0,
    limits: UploadLimits = NO_LIMITS,
):
    chunk = Chunk(start, end, (start * 31 + end) & 0xFFFFFFFF)
    token = f"t{start}-{end}"
    claimed = await repo.claim(
        file_id, owner, False, start, end, total, chunk.crc32, token, LEASE, True, now=now, limits=limits
    )
    assert claimed.outcome == "claimed", claimed
    return await repo.commit(file_id, token, chunk, None, None, now=now)


def test_claim_commit_and_next_expected_over_out_of_order_chunks(run, fake_redis):
    async def scenario(repo):
        assert (await repo.claim("f", "alice", False, 0, 9, 30, 1, "x", LEASE, create=False)).outcome == "absent"
        claimed = await repo.claim("f", "alice", False, 10, 19, 30, 7, "a", LEASE, create=True, now=T0)
        assert (claimed.outcome, claimed.state, claimed.total) == ("claimed", "uploading", 30)
        assert (await repo.get("f")).provisional
        done = await repo.commit("f", "a", Chunk(10, 19, 7), "name.bin", "ab" * 32, now=T0 + 1)
        assert (done.outcome, done.received, done.next_expected) == ("committed", 10, 0)
        assert (await put(repo, "f", 0, 9, 30)).next_expected == 20  # over the chunk already there
        last = await put(repo, "f", 20, 29, 30, now=T0 + 2)
        assert (last.state, last.received, last.next_expected) == ("assembling", 30, 30)
        upload = await repo.get("f")
        assert upload.file_name == "name.bin" and upload.expected_sha256 == "ab" * 32
        assert [c.start for c in await repo.chunks("f")] == [0, 10, 20]

    run(scenario)
    assert fake_redis.zscore(ASSEMBLING_KEY, "f") == T0 + 2


def test_duplicate_overlap_in_flight_and_ownership(run):
    async def scenario(repo):
        await put(repo, "f", 0, 9, 100)
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 9, "d", LEASE, True)).outcome == "duplicate"
        assert (await repo.claim("f", "alice", False, 5, 14, 100, 1, "o", LEASE, True)).outcome == "overlap"
        assert (await repo.claim("f", "alice", False, 10, 19, 100, 1, "p", LEASE, True)).outcome == "claimed"
        assert (await repo.claim("f", "alice", False, 15, 24, 100, 1, "q", LEASE, True)).outcome == "overlap"
        assert (await repo.claim("f", "alice", False, 20, 29, 101, 1, "r", LEASE, True)).outcome == "total_mismatch"
        assert (await repo.claim("f", "bob", False, 20, 29, 100, 1, "s", LEASE, True)).outcome == "not_found"
        assert (await repo.claim("f", "root", True, 20, 29, 100, 1, "t", LEASE, True)).outcome == "claimed"

    run(scenario)


def test_a_lapsed_claim_lets_another_in_and_its_commit_is_lost(run):
    async def scenario(repo):
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 1, "old", 1.0, True, now=T0)).outcome == "claimed"
        assert (
            await repo.claim("f", "alice", False, 0, 9, 100, 2, "new", LEASE, True, now=T0 + 5)
        ).outcome == "claimed"
        assert (await repo.commit("f", "old", Chunk(0, 9, 1), None, None)).outcome == "lost"
        assert await repo.renew("f", "new", LEASE) and not await repo.renew("f", "old", LEASE)
        assert (await repo.commit("f", "new", Chunk(0, 9, 2), None, None)).received == 10

    run(scenario)


def test_release_drops_a_provisional_upload_its_quota_and_its_index_entries(run, fake_redis):
    async def scenario(repo):
        assert (await repo.claim("f", "alice", False, 0, 9, 100, 1, "a", LEASE, True, now=T0)).outcome == "claimed"
        assert await repo.open_uploads_of("alice") == (1, 100)
        assert await repo.release("f", "a")
        assert await repo.get("f") is None and await repo.open_uploads_of("alice") == (0, 0)
        await put(repo, "g", 0, 9, 100)
        assert (await repo.claim("g", "alice", False, 10, 19, 100, 1, "b", LEASE, True)).outcome == "claimed"
        assert not await repo.release("g", "b")  # it has a chunk: kept
        assert (await repo.get("g")).received == 10

    run(scenario)
    assert fake_redis.zrange(owner_files_key("alice"), 0, -1) == fake_redis.zrange(ALL_FILES_KEY, 0, -1) == [b"g"]
    assert fake_redis.hget(quota_key("alice"), "uploads") == b"1"


def test_byte_offsets_past_four_gib_and_one_tib_stay_exact(run, fake_redis):
    async def scenario(repo):
        assert (await put(repo, "big", 0, TiB - 2, TiB)).next_expected == TiB - 1
        last = await put(repo, "big", TiB - 1, TiB - 1, TiB)
        assert (last.state, last.received, last.next_expected) == ("assembling", TiB, TiB)
        assert await repo.open_uploads_of("alice") == (1, TiB)

    run(scenario)
    assert fake_redis.hget(upload_key("big"), "next") == str(TiB).encode()  # %d, not 1.099511627776e+12


def test_open_upload_counts_and_refuses_past_each_limit(run):
    async def scenario(repo):
        limits = UploadLimits(max_open_uploads=2, max_open_bytes=1000)
        assert (await repo.open_upload("a", "alice", 600, limits, now=T0)).outcome == "created"
        assert (await repo.open_upload("a", "alice", 600, limits, now=T0)).outcome == "exists"
        refused = await repo.open_upload("b", "alice", 500, limits, now=T0)
        assert (refused.outcome, refused.extra) == ("quota_exceeded", "400")
        assert (await repo.open_upload("b", "alice", 400, limits, now=T0)).outcome == "created"
        assert (await repo.open_upload("c", "alice", 1, limits, now=T0)).outcome == "too_many_uploads"
        assert (await repo.open_upload("c", "bob", 1, limits, now=T0)).outcome == "created"
        assert await repo.open_uploads_of("alice") == (2, 1000)

    run(scenario)


def test_the_creation_rate_is_a_bucket_refilled_over_a_minute(run):
    async def scenario(repo):
        limits = UploadLimits(creates_per_minute=2)
        assert [(await repo.open_upload(f"u{i}", "alice", 1, limits, now=T0)).outcome for i in range(3)] == [
            "created",
            "created",
            "rate_limited",
        ]
        assert (await repo.open_upload("u3", "alice", 1, limits, now=T0)).extra == "30"  # seconds to wait
        assert (await repo.open_upload("u3", "alice", 1, limits, now=T0 + 30)).outcome == "created"

    run(scenario)


def test_every_way_an_upload_ends_gives_its_count_back_once(run, fake_redis):
    async def scenario(repo):
        for file_id in ("done", "deleted", "stale"):
            await put(repo, file_id, 0, 9, 10 if file_id == "done" else 100)
        assert await repo.open_uploads_of("alice") == (3, 210)
        assert await repo.transition("done", "assembling", state="complete", sha256="cd" * 32)
        assert not await repo.transition("done", "assembling", state="failed")  # no longer assembling
        assert await repo.tombstone("deleted") == "uploading"
        assert await repo.tombstone("deleted") == "expired"  # twice, counted back once
        assert await repo.expire_if_stale("stale", cutoff=T0 + 1, now=T0 + 2) == "expired"
        assert await repo.open_uploads_of("alice") == (0, 0)
        assert await repo.get("deleted") is None and (await repo.get("done")).sha256 == "cd" * 32

    run(scenario)
    assert fake_redis.zscore(ACTIVITY_KEY, "done") is None and not fake_redis.exists(quota_key("alice"))


def test_owner_indexes_list_newest_first_and_forget_removes_from_both(run):
    async def scenario(repo):
        for i, (file_id, owner) in enumerate([("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("a3", "alice")]):
            await put(repo, file_id, 0, 0, 10, owner=owner, now=T0 + i)
        assert [f for f, _ in await repo.newest_first("alice", 10, None)] == ["a3", "a2", "a1"]
        first_page = await repo.newest_first("alice", 2, None)
        last_id, last_score = first_page[-1]
        assert [f for f, _ in await repo.newest_first("alice", 2, (last_score, last_id))] == ["a1"]
        assert [f for f, _ in await repo.newest_first(None, 10, None)] == ["a3", "a2", "b1", "a1"]
        listed = await repo.get_many(["a3", "nope", "b1"])
        assert [u and (u.file_id, u.owner, u.received) for u in listed] == [("a3", "alice", 1), None, ("b1", "bob", 1)]
        await repo.forget("a2")
        assert [f for f, _ in await repo.newest_first("alice", 10, None)] == ["a3", "a1"]
        assert [f for f, _ in await repo.newest_first(None, 10, None)] == ["a3", "b1", "a1"]

    run(scenario)


def test_restore_decodes_its_fields_with_cjson_and_counts_the_upload_again(run, fake_redis):
    chunks = [Chunk(0, TiB // 2 - 1, 1), Chunk(TiB // 2, TiB - 1, 2)]
    manifest = Manifest("r", "alice", TiB, UploadState.ASSEMBLING, T0, T0 + 1, chunks=tuple(chunks), file_name="x.bin")

    async def scenario(repo):
        assert await repo.restore_manifest(manifest, now=T0 + 1)
        renamed = dataclasses.replace(manifest, file_name="other")
        assert not await repo.restore_manifest(renamed, now=T0 + 2)  # Redis knew it: unchanged
        upload = await repo.get("r")
        assert (upload.state, upload.total, upload.file_name) == ("assembling", TiB, "x.bin")
        assert (upload.received, upload.next_expected) == (TiB, TiB)
        assert await repo.chunks("r") == chunks
        assert await repo.open_uploads_of("alice") == (1, TiB)
        assert [f for f, _ in await repo.newest_first("alice", 10, None)] == ["r"]

    run(scenario)
    assert fake_redis.zscore(ASSEMBLING_KEY, "r") == T0 + 1 and fake_redis.zscore(ACTIVITY_KEY, "r") == T0 + 1


def test_create_with_extra_fields_and_a_deferred_length(run):
    async def scenario(repo):
        tus = TusFields("filename eC5iaW4=", deferred=True)
        created = await repo.create("t", "alice", 1000, UploadLimits(), tus=tus, now=T0)
        assert (created.outcome, created.state) == ("created", "uploading")
        assert (await repo.get("t")).tus == tus
        assert (await repo.declare_length("t", 10)).outcome == "declared"
        assert (await repo.declare_length("t", 10)).outcome == "not_deferred"
        assert (await put(repo, "t", 0, 9, 10)).state == "assembling"
        final = await repo.create(
            "cat",
            "alice",
            20,
            UploadLimits(),
            tus=TusFields(concat="final", parts=("p1", "p2")),
            complete_chunks=[Chunk(0, 9, 1), Chunk(10, 19, 2)],
            now=T0,
        )
        assert (final.outcome, final.state, final.received) == ("created", "assembling", 20)
        assert (await repo.get("cat")).tus.parts == ("p1", "p2")

    run(scenario)


def test_disk_reservations_count_others_until_released_or_lapsed(run, fake_redis):
    async def scenario(repo):
        assert await repo.reserve_disk("a", 100, LEASE, now=T0) == 0
        assert await repo.reserve_disk("b", 50, 1.0, now=T0) == 100
        assert await repo.reserve_disk("a", 100, LEASE, now=T0) == 50  # its own hold is not counted
        assert await repo.reserve_disk("c", 1, LEASE, now=T0 + 5) == 100  # b lapsed and is dropped
        await repo.release_disk("a")
        assert await repo.reserve_disk("c", 1, LEASE, now=T0 + 5) == 0
        await repo.mark_persisted("nope", T0)  # a plain EVAL: nothing to mark

    run(scenario)
    assert fake_redis.hkeys(DISK_RESERVED_KEY) == [b"c"] and not fake_redis.exists(upload_key("nope"))
