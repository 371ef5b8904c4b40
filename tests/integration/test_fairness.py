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
from core.state import DISK_RESERVED_KEY, UploadRepository
from core.storage import Storage
from core.uploads import ChunkRequest, UploadService
from core.users import UserStore

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
    assert upload_after_refusal is None  # refused before it was created


# --- an assembly the broker refused ----------------------------------------------------------


def test_last_chunk_stored_but_broker_refusing_is_200_and_persist_queues_the_assembly(run, redis_db):
    """A full disk may make the broker (Redis) refuse writes after the last chunk was stored.
    The chunk is stored and the upload `assembling`: the client is told so (200), and the
    persist job, which enqueues assemblies nobody runs, starts it."""
    queued: list[str] = []

    def refusing_broker(file_id: str) -> None:
        raise OperationalError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist")

    async def scenario(env: Env):
        receipt = await env.send(env.user(), "last", b"y" * 1000, 0, 1000)
        report = await maintenance.persist(env.service, idle_for=300, assembly_grace=0,
                                           enqueue=queued.append, now=time.time() + 1)
        return receipt, report

    receipt, report = run(scenario, enqueue=refusing_broker)
    assert (receipt.state, receipt.received_bytes) == ("assembling", 1000)
    assert report.requeued == ["last"] and queued == ["last"]
