"""The storage seam holds: the whole service runs on a store that has no files.

The app, the tus service and the in-process worker get tests/fast/memory_store.py's
MemoryStore (bytes in dicts, no local paths, no copy_file_range). Uploads in chunks and
through tus (concatenation included), assembly, downloads with ranges and signed links,
deletion, a full store, and the persist job's manifests all work, and nothing is written
under the data directory: nothing outside the store reached for a path.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time

import fakeredis
import pytest

from core import maintenance
from core.state import UploadRepository
from core.storage import ByteStore, Concatenates, FreeSpace, LocalPaths
from tests.fast.inprocess import InProcessWorker, in_process_client
from tests.fast.memory_store import MemoryStore
from tests.support import Enqueued, send_chunk, wait_for_state

DATA = os.urandom(300_000)
TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def make_client(settings, fake_server, store):
    """make_client(**settings_changes): the app and a worker, both on the memory store."""
    opened = []

    def make(**changes):
        app_settings = settings.model_copy(update=changes) if changes else settings
        worker = InProcessWorker(app_settings, fake_server, store)
        context = in_process_client(app_settings, fake_server, worker)
        opened.append((worker, context))
        return context.__enter__()

    yield make
    for worker, context in reversed(opened):
        context.__exit__(None, None, None)
        worker.close()


@pytest.fixture
def client(make_client):
    return make_client()


def files_on_disk(settings) -> list[str]:
    """Every file under the data dir but the users' database (and its WAL)."""
    found = []
    for root, _dirs, names in os.walk(settings.data_dir):
        found += [os.path.join(root, n) for n in names if not n.startswith("users.sqlite3")]
    return found


def upload(client, account, file_id: str, data: bytes, chunk: int = 100_000) -> dict:
    starts = list(range(0, len(data), chunk))
    for start in reversed(starts):  # out of order, as clients may
        end = min(start + chunk, len(data)) - 1
        answer = send_chunk(client, "", account.token, file_id, data, start, end, X_File_Name="seam.bin")
        assert answer.status_code == 200, answer.text
    return wait_for_state(client, "", account.token, file_id, timeout=20)


def test_the_memory_store_is_a_byte_store_without_the_optional_abilities(store):
    as_store: ByteStore = store  # mypy checks the Protocol where tests are type-checked
    assert not isinstance(as_store, LocalPaths) and not isinstance(as_store, Concatenates)


def test_upload_assemble_and_download_with_ranges_through_the_store_only(client, alice, store, settings):
    status = upload(client, alice, "seam", DATA)
    assert status["state"] == "complete" and status["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert store.finals["seam"].data == DATA and "seam" not in store.staged
    assert store.finals["seam"].meta["sha256"] == status["sha256"]

    whole = client.get("/download/seam", headers=alice.headers)
    assert whole.status_code == 200 and whole.content == DATA
    part = client.get("/download/seam", headers={**alice.headers, "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and part.content == DATA[1000:2000]
    several = client.get("/download/seam", headers={**alice.headers, "Range": "bytes=0-9, 299990-"})
    assert several.status_code == 206 and DATA[299_990:] in several.content and DATA[:10] in several.content
    link = client.post("/files/seam/link", headers=alice.headers).json()
    assert client.get(link["url"], headers={"Range": "bytes=-5"}).content == DATA[-5:]
    assert files_on_disk(settings) == []


def test_x_accel_redirect_is_not_offered_without_local_files(make_client, alice):
    client = make_client(accel_redirect=True)
    upload(client, alice, "accel", DATA[:1000], chunk=1000)
    answer = client.get("/download/accel", headers=alice.headers)
    assert answer.status_code == 200 and answer.content == DATA[:1000]
    assert "x-accel-redirect" not in answer.headers


def test_tus_concatenation_is_copied_through_the_store_and_fsync_reaches_it(make_client, alice, store, settings):
    client = make_client(fsync_chunks=True)
    parts = [DATA[:120_000], DATA[120_000:]]
    urls = []
    for part in parts:
        created = client.post(
            "/files/",
            headers={**alice.headers, **TUS, "Upload-Length": str(len(part)), "Upload-Concat": "partial"},
        )
        assert created.status_code == 201, created.text
        url = created.headers["location"]
        answer = client.patch(url, content=part, headers={**alice.headers, **PATCH, "Upload-Offset": "0"})
        assert answer.status_code == 204, answer.text
        urls.append(url)
    syncs_after_patches = store.syncs
    assert syncs_after_patches >= 2  # FT_FSYNC_CHUNKS: every PATCH synced through the store
    name = base64.b64encode(b"joined.bin").decode()
    final = client.post(
        "/files/",
        headers={
            **alice.headers,
            **TUS,
            "Upload-Concat": "final;" + " ".join(urls),
            "Upload-Metadata": f"filename {name}",
        },
    )
    assert final.status_code == 201, final.text
    final_id = final.headers["location"].rsplit("/", 1)[1]
    status = wait_for_state(client, "", alice.token, final_id, timeout=20)
    assert status["state"] == "complete", status
    assert client.get(f"/download/{final_id}", headers=alice.headers).content == DATA
    assert store.staged == {}  # the parts were removed once copied, the final's staging published
    assert files_on_disk(settings) == []


def test_a_store_with_no_room_is_507_and_delete_frees_it(make_client, alice, store):
    store.capacity = 400_000  # the memory store is dense: the first chunk takes all 300,000 bytes
    client = make_client(min_free_bytes=0, free_space_ttl=0)
    first = send_chunk(client, "", alice.token, "roomy", DATA, 0, 99_999)
    assert first.status_code == 200, first.text
    refused = send_chunk(client, "", alice.token, "roomy", DATA, 100_000, 199_999)
    assert (refused.status_code, refused.json()["code"]) == (507, "insufficient_storage")
    assert client.get("/status/roomy", headers=alice.headers).json()["received_bytes"] == 100_000
    assert client.delete("/upload/roomy", headers=alice.headers).status_code == 204
    assert store.staged == {}


def test_persist_writes_manifests_to_the_store_and_an_upload_returns_from_them(
    client, alice, store, settings, fake_server, fake_redis
):
    assert send_chunk(client, "", alice.token, "idle", DATA, 0, 99_999).status_code == 200

    async def persist() -> list[str]:
        redis = fakeredis.FakeAsyncRedis(server=fake_server)
        try:
            repo = UploadRepository(redis)
            report = await maintenance.persist(repo, store, idle_for=0, assembly_grace=3600, enqueue=Enqueued())
            return report.persisted
        finally:
            await redis.aclose()

    assert asyncio.run(persist()) == ["idle"]
    manifest = store.staged["idle"].manifest
    assert manifest is not None and manifest["chunks"][0][:2] == [0, 99_999]
    fake_redis.flushall()  # Redis lost everything; the store kept the manifest
    status = client.get("/status/idle", headers=alice.headers).json()
    assert status["received_bytes"] == 100_000 and status["missing_ranges"] == [[100_000, len(DATA) - 1]]
    for start in (100_000, 200_000):
        assert send_chunk(client, "", alice.token, "idle", DATA, start, start + 99_999).status_code == 200
    assert wait_for_state(client, "", alice.token, "idle", timeout=20)["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", store.finals["idle"].meta["sha256"])


def count_measures(store: MemoryStore) -> list[int]:
    """The store's free-space measures from now on, one entry each."""
    measures: list[int] = []
    real = store.free_bytes

    def counting() -> int:
        measures.append(1)
        return real()

    store.free_bytes = counting  # type: ignore[method-assign]
    return measures


def test_free_space_is_measured_once_a_ttl_counts_own_writes_and_refuses_only_on_a_new_measure(store):
    async def scenario() -> None:
        measures = count_measures(store)
        store.capacity = 1000
        free = FreeSpace(store, max_age=3600)
        assert await free.bytes() == 1000 and await free.bytes() == 1000 and len(measures) == 1
        free.spent(300)  # this process wrote 300 bytes: counted before the next measure
        assert await free.bytes() == 700 and len(measures) == 1
        assert await free.at_least(700) and len(measures) == 1  # a yes from the cached estimate
        store.capacity = 5000  # space returned (another process deleted files)
        assert await free.at_least(4000) and len(measures) == 2  # a no is measured again first
        assert await free.bytes() == 5000  # the spent bytes were in that measure
        store.capacity = 10  # others filled the store: the estimate says yes until it is measured again
        assert await free.at_least(100) and len(measures) == 2
        assert not await FreeSpace(store, max_age=0).at_least(100) and len(measures) == 4

    asyncio.run(scenario())


def test_an_old_free_space_estimate_is_answered_at_once_and_measured_again_behind_it(store):
    """Past its age the estimate still answers (no chunk queues behind the measuring thread)
    while one new measure runs in the background; the answers after it use that measure."""

    async def scenario() -> None:
        measures = count_measures(store)
        store.capacity = 1000
        free = FreeSpace(store, max_age=0.05)
        assert await free.bytes() == 1000 and len(measures) == 1  # the first measure is waited for
        store.capacity = 800
        while time.monotonic() < free._expires:  # noqa: ASYNC110 - the estimate's age passing
            await asyncio.sleep(0.01)
        answers = [await free.bytes() for _ in range(5)]
        assert answers == [1000] * 5 and len(measures) == 1  # old estimate; one measure under way
        while len(measures) < 2 or free._refreshing is not None:  # noqa: ASYNC110 - the refresh is a task of ours
            await asyncio.sleep(0.001)
        assert len(measures) == 2 and await free.bytes() == 800
        assert not await free.at_least(900) and len(measures) >= 3  # a refusal still measures anew

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_callers_that_need_a_measure_all_wait_for_the_same_one_and_wake_together(store):
    """A new process's first chunks, or refusals, all need a measure at once: one measure
    answers them all, and they go on in the same turn of the event loop (not one turn each, as
    behind a lock: 256 first chunks waited up to 2 s for their turn)."""

    async def scenario() -> None:
        measures = count_measures(store)
        store.capacity = 1000
        loop = asyncio.get_running_loop()
        turn = 0

        def tick() -> None:
            nonlocal turn
            turn += 1
            loop.call_soon(tick)

        tick()
        free = FreeSpace(store, max_age=3600)

        async def first_call() -> int:
            await free.bytes()
            return turn

        turns = await asyncio.gather(*(first_call() for _ in range(200)))
        assert len(measures) == 1 and len(set(turns)) == 1
        store.capacity = 10  # the estimate (1000) says no to 5000: a refusal waits for a new measure

        async def refusal() -> tuple[bool, int]:
            return await free.at_least(5000), turn

        refusals = await asyncio.gather(*(refusal() for _ in range(200)))
        assert not any(answer for answer, _ in refusals) and len(measures) == 2  # one measure for all
        assert len({when for _, when in refusals}) == 1

    asyncio.run(asyncio.wait_for(scenario(), 10))
