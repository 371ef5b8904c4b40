"""The files list (core/files_list.py, the indexes in core/state.py) against a real redis-server.

Uploads are created through the repository's own scripts with chosen `now`s, so the order is
known; the rebuild tests lose Redis's data (FLUSHDB) and bring the list back from disk.
"""

from __future__ import annotations

import hashlib

import pytest

from core import assembly, files_list
from core.errors import InvalidRequest
from core.state import ALL_FILES_KEY, FILES_INDEXED_KEY, UploadRepository, owner_files_key
from core.storage import Storage
from core.uploads import UploadService
from tests.support import run_on_redis, store_chunk


class Env:
    def __init__(self, settings, client):
        self.repo = UploadRepository(client)
        self.storage = Storage(settings)
        self.service = UploadService(settings, self.repo, self.storage)

    async def start(self, file_id: str, owner: str, now: float, total: int = 10) -> None:
        """An upload with its first byte stored: `uploading`, created at `now`."""
        await self.put(file_id, owner, 0, 0, total, now)

    async def put(
        self, file_id: str, owner: str, start: int, end: int, total: int, now: float, payload: bytes | None = None
    ) -> None:
        await store_chunk(self.repo, self.storage, file_id, owner, start, end, total, now, payload, f"{file_id}.bin")

    async def ids(self, owner: str | None, limit: int = 100, cursor: str | None = None) -> tuple[list[str], str | None]:
        page = await files_list.list_files(self.repo, self.storage, owner, limit, cursor)
        return [u.file_id for u in page.items], page.next_cursor

    async def walk(self, owner: str | None, limit: int, between_pages=None) -> list[str]:
        seen, cursor = [], None
        while True:
            ids, cursor = await self.ids(owner, limit, cursor)
            seen += ids
            if cursor is None:
                return seen
            if between_pages is not None:
                await between_pages()


@pytest.fixture
def run(settings, redis_db):
    return run_on_redis(settings.redis_url, lambda client: Env(settings, client))


def test_newest_first_per_owner_and_for_everybody(run):
    async def scenario(env: Env):
        for i in range(5):
            await env.start(f"a{i}", "alice", now=1000.0 + i)
            await env.start(f"b{i}", "bob", now=1000.5 + i)
        assert (await env.ids("alice"))[0] == ["a4", "a3", "a2", "a1", "a0"]
        assert (await env.ids("bob"))[0] == ["b4", "b3", "b2", "b1", "b0"]
        everybody, _ = await env.ids(None)
        assert everybody == ["b4", "a4", "b3", "a3", "b2", "a2", "b1", "a1", "b0", "a0"]
        assert (await env.ids("carol"))[0] == []

    run(scenario)


def test_paging_visits_every_file_once_while_files_are_added(run):
    async def scenario(env: Env):
        originals = [f"f{i:03d}" for i in range(40)]
        for i, file_id in enumerate(originals):
            # Groups of four share one created_at: ties are ordered by file id and must not repeat.
            await env.start(file_id, "alice", now=2000.0 + i // 4)
        added = iter(range(1000))

        async def add_some():
            for _ in range(3):
                n = next(added)
                await env.start(f"new{n:03d}", "alice", now=5000.0 + n)  # newer than everything
            await env.start(f"old{next(added):03d}", "alice", now=1.0)  # older: may be seen or not

        seen = await env.walk("alice", 7, between_pages=add_some)
        assert len(seen) == len(set(seen)), "a file was listed twice"
        assert set(originals) <= set(seen)
        # Newest first across pages, with ties by id descending (Redis's reverse order).
        expected = sorted(originals, key=lambda f: (int(f[1:]) // 4, f), reverse=True)
        assert [f for f in seen if f in originals] == expected

    run(scenario)


def test_removed_and_given_back_uploads_leave_the_index(run, redis_db):
    async def scenario(env: Env):
        await env.start("kept", "alice", now=10.0)
        await env.start("gone", "alice", now=11.0)
        await env.repo.forget("gone")
        # A first chunk that fails gives its claim back: the provisional upload disappears.
        claimed = await env.repo.claim("never", "alice", False, 0, 9, 10, 1, "tok", 60, True, now=12.0)
        assert claimed.outcome == "claimed"
        assert (await env.ids("alice"))[0] == ["never", "kept"]
        assert await env.repo.release("never", "tok")
        assert (await env.ids("alice"))[0] == ["kept"]
        assert (await env.ids(None))[0] == ["kept"]

    run(scenario)
    assert redis_db.zrange(owner_files_key("alice"), 0, -1) == [b"kept"]
    assert redis_db.zrange(ALL_FILES_KEY, 0, -1) == [b"kept"]


@pytest.mark.parametrize("cursor", ["!!!", "bm90IGEgY3Vyc29y", "aW5mL2Zvbw", "MS4wLy5oaWRkZW4"])
def test_a_cursor_not_handed_out_is_refused(run, cursor):
    async def scenario(env: Env):
        with pytest.raises(InvalidRequest):
            await env.ids("alice", cursor=cursor)
        with pytest.raises(InvalidRequest):
            await env.ids("alice", limit=0)

    run(scenario)


def test_the_list_comes_back_from_disk_after_redis_lost_everything(run, redis_db):
    payload = b"complete file bytes"

    async def scenario(env: Env):
        # One complete file (files/<id>/meta.json), one persisted partial upload (a manifest),
        # one partial upload Redis never persisted (it is lost with Redis: nothing on disk).
        await env.put("done", "alice", 0, len(payload) - 1, len(payload), now=100.0, payload=payload)
        report = await assembly.assemble(env.repo, env.storage, "done")
        assert report["result"] == "complete"
        await env.start("partial", "alice", now=200.0)
        env.service.write_manifest(await env.repo.get("partial"), await env.repo.chunks("partial"))
        await env.start("volatile", "bob", now=300.0)
        assert (await env.ids(None))[0] == ["volatile", "partial", "done"]

        await env.repo.redis.flushdb()
        assert await files_list.ensure_files_index(env.repo, env.storage)
        assert not await files_list.ensure_files_index(env.repo, env.storage), "rebuilt twice"
        page = await files_list.list_files(env.repo, env.storage, "alice", 10, None)
        assert [(u.file_id, u.state, u.owner) for u in page.items] == [
            ("partial", "uploading", "alice"),
            ("done", "complete", "alice"),
        ]
        assert page.items[1].sha256 == hashlib.sha256(payload).hexdigest()
        assert (await env.ids(None))[0] == ["partial", "done"]

    run(scenario)


def test_uploads_redis_knows_but_the_index_lacks_are_indexed(run, redis_db):
    """An upgrade from a version without the list: hashes exist, the indexes do not."""

    async def scenario(env: Env):
        await env.start("older", "alice", now=1.0)
        await env.start("newer", "alice", now=2.0)
        await env.repo.redis.delete(owner_files_key("alice"), ALL_FILES_KEY, FILES_INDEXED_KEY)
        assert (await env.ids("alice"))[0] == ["newer", "older"]

    run(scenario)
