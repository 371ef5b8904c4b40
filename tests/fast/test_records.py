"""core/records.py: the manifest and meta.json formats round-trip, read what earlier releases
wrote, and refuse what a newer release wrote; and an unreadable record is never removed."""

from __future__ import annotations

import asyncio
import json
import os

import fakeredis
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from core import maintenance
from core.errors import UnreadableRecord
from core.records import (
    MANIFEST_VERSION,
    META_VERSION,
    Chunk,
    FileMeta,
    Manifest,
    RecordError,
    TusFields,
    UnsupportedRecordVersion,
    Upload,
    UploadState,
)
from core.state import UploadRepository
from core.storage import Storage, write_json_atomic
from core.uploads import UploadService

ids = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}", fullmatch=True)
texts = st.text(max_size=30)
names = st.none() | st.text(min_size=1, max_size=30)
digests = st.none() | st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
offsets = st.integers(min_value=0, max_value=2**53)


@st.composite
def chunk_lists(draw: st.DrawFn) -> tuple[Chunk, ...]:
    """Chunks that do not overlap, as the repository stores them."""
    cuts = sorted(set(draw(st.lists(offsets, max_size=12))))
    pairs = list(zip(cuts[::2], cuts[1::2], strict=False))
    return tuple(Chunk(s, e, draw(st.integers(0, 2**32 - 1))) for s, e in pairs)


tus_fields = st.one_of(
    st.just(TusFields()),
    st.builds(TusFields, metadata=texts, deferred=st.booleans(), concat=st.sampled_from([None, "partial"])),
    st.builds(TusFields, metadata=texts, concat=st.just("final"), parts=st.lists(ids, max_size=4).map(tuple)),
)

manifests = st.builds(
    Manifest,
    file_id=ids,
    owner=st.text(min_size=1, max_size=20),
    total=offsets,
    state=st.sampled_from(list(UploadState)),
    created_at=times,
    updated_at=times,
    chunks=chunk_lists(),
    file_name=names,
    expected_sha256=digests,
    persisted_at=st.none() | times,
    error=names,
    tus=tus_fields,
)

metas = st.builds(
    FileMeta,
    file_id=ids,
    owner=st.text(min_size=1, max_size=20),
    size=offsets,
    sha256=st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    created_at=times,
    completed_at=times,
    file_name=names,
    expected_sha256=digests,
)


def through_disk(document: dict) -> dict:
    """As written to and read back from a file."""
    return json.loads(json.dumps(document, separators=(",", ":")))


@given(manifests)
@examples(max_examples=50)  # the fast layer stays fast
def test_a_manifest_round_trips(manifest: Manifest) -> None:
    document = through_disk(manifest.to_json())
    assert document["version"] == MANIFEST_VERSION
    assert Manifest.from_json(document, manifest.file_id) == manifest


@given(metas)
@examples(max_examples=50)  # the fast layer stays fast
def test_a_meta_round_trips(meta: FileMeta) -> None:
    document = through_disk(meta.to_json())
    assert document["version"] == META_VERSION
    assert FileMeta.from_json(document, meta.file_id) == meta


@given(tus_fields)
@examples(max_examples=50)  # the fast layer stays fast
def test_tus_fields_round_trip_through_their_strings(tus: TusFields) -> None:
    assert TusFields.from_strings(tus.as_strings()) == tus


def test_a_manifest_says_what_it_received() -> None:
    upload = Upload("m", "alice", 1000, UploadState.UPLOADING, 150, 100, created_at=1.0, updated_at=2.0)
    manifest = Manifest.of(upload, [Chunk(500, 549, 7), Chunk(0, 99, 3)], persisted_at=3.0)
    assert (manifest.received, manifest.next_expected) == (150, 100)
    document = manifest.to_json()
    assert document["received_ranges"] == [[0, 99], [500, 549]]
    assert document["chunks"] == [[500, 549, 7], [0, 99, 3]]
    assert document["persisted_at"] == 3.0 and document["state"] == "uploading"


# What the release before this one wrote, byte for byte in shape (core/uploads.py, core/assembly.py).
EARLIER_MANIFEST = {
    "version": 1,
    "file_id": "old",
    "owner": "alice",
    "total": 1000,
    "state": "uploading",
    "file_name": "été.bin",
    "expected_sha256": None,
    "created_at": 1000.0,
    "updated_at": 1020,
    "persisted_at": None,
    "error": None,
    "received_ranges": [[0, 99]],
    "chunks": [[0, 99, 12345]],
    "tus": {"tus_metadata": "", "tus_deferred": "0"},
}
EARLIER_META = {
    "file_id": "done",
    "owner": "alice",
    "size": 5,
    "sha256": "12" * 32,
    "expected_sha256": None,
    "file_name": "x.iso",
    "created_at": 10.0,
    "completed_at": 20.0,
}


def test_records_of_earlier_releases_are_read() -> None:
    manifest = Manifest.from_json(EARLIER_MANIFEST, "old")
    assert (manifest.owner, manifest.total, manifest.state, manifest.file_name) == (
        "alice",
        1000,
        "uploading",
        "été.bin",
    )
    assert manifest.chunks == (Chunk(0, 99, 12345),) and manifest.updated_at == 1020.0
    assert manifest.tus == TusFields()  # an empty metadata, a length declared: nothing particular
    unversioned = {k: v for k, v in EARLIER_MANIFEST.items() if k != "version"}
    assert Manifest.from_json(unversioned, "old") == manifest
    meta = FileMeta.from_json(EARLIER_META, "done")  # meta.json had no version before this one
    assert (meta.owner, meta.size, meta.sha256, meta.file_name, meta.expected_sha256) == (
        "alice",
        5,
        "12" * 32,
        "x.iso",
        None,
    )


@pytest.mark.parametrize("reader", [Manifest.from_json, FileMeta.from_json])
def test_a_record_of_a_newer_release_is_refused_clearly(reader) -> None:
    document = {**(EARLIER_MANIFEST if reader == Manifest.from_json else EARLIER_META), "version": 2}
    with pytest.raises(UnsupportedRecordVersion, match="version 2, written by a newer release"):
        reader(document, "x")


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True, None])
def test_a_version_that_is_no_positive_integer_is_refused(version) -> None:
    with pytest.raises(RecordError, match="version"):
        Manifest.from_json({**EARLIER_MANIFEST, "version": version}, "x")


@pytest.mark.parametrize(
    "damage",
    [
        {"total": "lots"},
        {"state": "sleeping"},
        {"chunks": [[0, 99]]},
        {"tus": {"tus_concat": "sideways"}},
        {"tus": {"tus_concat": "final", "tus_parts": "{not json"}},
    ],
)
def test_a_damaged_manifest_is_a_record_error(damage) -> None:
    with pytest.raises(RecordError, match="manifest of x"):
        Manifest.from_json({**EARLIER_MANIFEST, **damage}, "x")


def test_a_meta_without_its_owner_is_a_record_error() -> None:
    with pytest.raises(RecordError, match=r"meta\.json of done"):
        FileMeta.from_json({k: v for k, v in EARLIER_META.items() if k != "owner"}, "done")


# --- restoring from records, through the repository (fakeredis) -------------------------------------
def _run(fake_server, scenario):
    async def main():
        client = fakeredis.FakeAsyncRedis(server=fake_server)
        try:
            return await scenario(UploadRepository(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_an_earlier_manifest_restores_and_a_newer_one_is_left_alone(settings, fake_server) -> None:
    storage = Storage(settings)
    for file_id, version in (("old", 1), ("new", 2)):
        fd = storage.open_for_chunk(file_id, 1000)
        os.close(fd)
        write_json_atomic(storage.manifest_path(file_id), {**EARLIER_MANIFEST, "version": version})
        os.utime(storage.staging_dir(file_id), (0, 0))  # as old as can be: cleanup would remove an orphan

    async def scenario(repo: UploadRepository):
        service = UploadService(settings, repo, storage)
        assert await service.restore_from_disk("old")
        old = await repo.get("old")
        assert old is not None and (old.received, old.next_expected, old.file_name) == (100, 100, "été.bin")
        with pytest.raises(UnreadableRecord, match="newer release"):
            await service.restore_from_disk("new")
        assert await repo.get("new") is None
        # Cleanup neither removes the upload it cannot read nor stops at it.
        return await maintenance.cleanup(repo, storage, older_than=10**10)

    report = _run(fake_server, scenario)
    assert report.removed == []
    assert storage.manifest_path("new").exists() and storage.staging_data("new").exists()


def test_a_complete_file_restores_from_an_unversioned_meta(settings, fake_server) -> None:
    storage = Storage(settings)
    storage.final_dir("done").mkdir()
    storage.final_data("done").write_bytes(b"hello")
    write_json_atomic(storage.final_meta_path("done"), EARLIER_META)

    async def scenario(repo: UploadRepository):
        assert await UploadService(settings, repo, storage).restore_from_disk("done")
        return await repo.get("done")

    done = _run(fake_server, scenario)
    assert done is not None
    assert (done.state, done.total, done.received, done.sha256, done.completed_at) == (
        UploadState.COMPLETE,
        5,
        5,
        "12" * 32,
        20.0,
    )
