"""The upload state machine: receiving chunks, reporting status, restoring from disk.

    uploading --(last missing byte committed)--> assembling --(verified, moved)--> complete
                                                             \\--(mismatch)------> failed

A chunk's bytes stream straight to their offset in the staging file while its CRC-32
is computed; the range is claimed in Redis first (so two writers never write the same
bytes) and recorded only after the CRC matched. A failed or interrupted chunk
releases its claim and leaves the upload as it was.

The states and the records on disk (manifest, meta.json) are typed in core/records.py; their
Redis form is the repository's (core/state.py). `restore_from_disk`, `load` and
`write_manifest` are functions of (repository, storage), for the workers' jobs as well.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import unquote

import anyio
from pydantic import BaseModel, Field

from core import intervals
from core.body_pace import paced
from core.checksums import crc32
from core.chunk_header import HEADER_SIZE, check_header_matches, decode_header, parse_content_range
from core.config import Settings
from core.errors import (
    AlreadyComplete,
    Assembling,
    ChecksumMismatch,
    ChunkTooLarge,
    FileTooLarge,
    InsufficientStorage,
    InvalidChunkHeader,
    InvalidFileName,
    InvalidSha256,
    LengthMismatch,
    NotComplete,
    NotFound,
    Overlap,
    QuotaExceeded,
    TooManyChunks,
    TooManyUploads,
    TotalMismatch,
    TransferError,
    UnreadableRecord,
    UploadFailed,
    UploadRateLimited,
)
from core.file_ids import validate_file_id
from core.records import FileMeta, Manifest, RecordError, UploadState, VisibleState
from core.state import Chunk, Outcome, Progress, Snapshot, Upload, UploadLimits, UploadRepository
from core.storage import ByteStore, FileSource, FreeSpace, final_source, has_record, open_staged
from core.threads import run_blocking
from core.users import User

log = logging.getLogger("ft.uploads")
RELEASE_RETRY_SECONDS = 0.5
SETTLE_SECONDS = 10.0  # what shutdown waits for background work (UploadService.settle)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Queues a file's assembly for the workers (core/jobs.py AssemblyQueue.push in the API and workers).
EnqueueAssembly = Callable[[str], Awaitable[object]]

MAX_FILE_NAME_BYTES = 1024
# /status lists the first this many gaps (a client resumes from the first ones anyway); more
# would make its answer, and the time to build it, grow with the number of chunks.
MAX_MISSING_RANGES = 1000


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """The headers of `POST /upload/{file_id}` that the domain cares about."""

    content_range: str | None
    content_length: str | None = None
    file_name: str | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class CompletedFile:
    """What a download needs to know of a complete file: where its bytes come from (no path)."""

    file_id: str
    source: FileSource
    size: int
    sha256: str
    completed_at: float
    file_name: str


@dataclass(frozen=True, slots=True)
class ChunkReceipt:
    file_id: str
    state: UploadState
    received_bytes: int
    total_bytes: int
    next_expected_byte: int


# The answer of GET /status/{file_id} (CONTRACT 5), and the router's response model: defined once.
# (A comment, not a docstring: the schema in /openapi.json keeps the description it had, none.)
class UploadStatus(BaseModel):
    file_id: str
    state: VisibleState
    total_bytes: int | None = Field(description="null while a tus upload's length is deferred")
    received_bytes: int
    next_expected_byte: int
    # [start, end_inclusive] pairs; not tuple[int, int], whose `prefixItems` schema trips some
    # OpenAPI tools (schemathesis 4 among them).
    missing_ranges: list[Annotated[list[int], Field(min_length=2, max_length=2)]]
    missing_ranges_truncated: bool = Field(
        False, description="true when there are more gaps than the first 1000 listed in missing_ranges"
    )
    file_name: str | None
    created_at: str | None
    updated_at: str | None
    expires_at: str | None
    persisted_at: str | None
    sha256: str | None
    error: str | None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_file_name(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not raw.isascii():
        raise InvalidFileName("X-File-Name must be percent-encoded UTF-8 (raw non-ASCII bytes are ambiguous)")
    try:
        name = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidFileName("X-File-Name must be percent-encoded UTF-8") from None
    if len(name.encode()) > MAX_FILE_NAME_BYTES:
        raise InvalidFileName(f"X-File-Name is longer than {MAX_FILE_NAME_BYTES} bytes")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidFileName("X-File-Name must not contain control characters")
    return name


def check_sha256(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if not _SHA256_HEX.fullmatch(raw.strip()):
        raise InvalidSha256("X-File-SHA256 must be 64 hexadecimal digits")
    return raw.strip().lower()


class _Body:
    """Reads the first bytes of a streamed body exactly, then hands out the rest as it comes."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream.__aiter__()
        self._pending = b""

    async def read_exact(self, size: int) -> bytes:
        buffer = self._pending
        while len(buffer) < size:
            try:
                piece = await self._stream.__anext__()
            except StopAsyncIteration:
                break
            buffer += piece
        self._pending = buffer[size:]
        return buffer[:size]

    async def rest(self) -> AsyncIterator[bytes]:
        if self._pending:
            pending, self._pending = self._pending, b""
            yield pending
        async for piece in self._stream:
            if piece:
                yield piece


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def _disk_full_is_507() -> Iterator[None]:
    """A full disk (or quota) met while storing a chunk is the client's 507, never a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise InsufficientStorage("the disk filled up while storing this chunk; retry later") from None
        raise


def _raise_for(progress: Progress) -> None:
    """Turn a refused claim into the contract's error."""
    counters = {"next_expected_byte": progress.next_expected}
    match progress.outcome:
        case Outcome.NOT_FOUND:
            raise NotFound("no such upload")
        case Outcome.TOTAL_MISMATCH:
            raise TotalMismatch(
                f"this upload's total is {progress.total} bytes", total_bytes=progress.total, **counters
            )
        case Outcome.ALREADY_COMPLETE:
            raise AlreadyComplete(f"the upload is {progress.state}", state=progress.state)
        case Outcome.UPLOAD_FAILED:
            raise UploadFailed(f"the upload failed: {progress.extra}", error=progress.extra)
        case Outcome.OVERLAP | Outcome.LOST:
            raise Overlap("the chunk overlaps bytes already stored or being written", **counters)
        case Outcome.TOO_MANY_CHUNKS:
            raise TooManyChunks(
                f"this upload holds {progress.extra} chunks already; more only while they average "
                "at least FT_MIN_AVERAGE_CHUNK_BYTES: send larger chunks",
                max_chunks=int(progress.extra),
            )
        case Outcome.TOO_MANY_UPLOADS | Outcome.QUOTA_EXCEEDED | Outcome.RATE_LIMITED:
            raise_refused_creation(progress)


# Seconds a client is told to wait when it has too many uploads open: they end at their own pace.
OPEN_UPLOADS_RETRY_AFTER = 60


def raise_refused_creation(progress: Progress) -> None:
    """A new upload refused by its owner's limits (see `UploadRepository.open_upload`)."""
    match progress.outcome:
        case Outcome.TOO_MANY_UPLOADS:
            raise TooManyUploads(
                f"you have {progress.extra} uploads that are not complete; finish or delete some first",
                retry_after=OPEN_UPLOADS_RETRY_AFTER,
                max_open_uploads=int(progress.extra),
            )
        case Outcome.QUOTA_EXCEEDED:
            raise QuotaExceeded(
                "the declared sizes of your uploads that are not complete would exceed your quota; "
                f"{progress.extra} bytes are left",
                quota_bytes_left=int(progress.extra),
            )
        case Outcome.RATE_LIMITED:
            raise UploadRateLimited("you are creating uploads too fast; retry later", retry_after=int(progress.extra))


def _receipt(file_id: str, progress: Progress) -> ChunkReceipt:
    assert progress.state is not None, "a stored or duplicate chunk's upload has a state"
    return ChunkReceipt(file_id, progress.state, progress.received, progress.total, progress.next_expected)


class UploadService:
    def __init__(
        self,
        settings: Settings,
        repo: UploadRepository,
        storage: ByteStore,
        enqueue_assembly: EnqueueAssembly | None = None,
        on_chunk: Callable[[str], object] | None = None,
    ) -> None:
        self.settings = settings
        self.on_chunk = on_chunk or (lambda result: None)
        self.repo = repo
        self.storage = storage
        self.free_space = FreeSpace(storage, settings.free_space_ttl)
        self.enqueue_assembly = enqueue_assembly
        self._background: set[asyncio.Task[None]] = set()  # claim releases waiting for Redis, queued assemblies
        self.limits = UploadLimits(
            max_open_uploads=settings.max_open_uploads,
            max_open_bytes=settings.user_quota_bytes,
            creates_per_minute=settings.upload_create_rate,
            max_chunks=settings.max_chunks_per_upload,
            min_average_chunk_bytes=settings.min_average_chunk_bytes,
        )

    # --- receiving -------------------------------------------------------------
    async def receive_chunk(
        self, user: User, file_id: str, request: ChunkRequest, body: AsyncIterator[bytes]
    ) -> ChunkReceipt:
        """Store one chunk; its result goes to `on_chunk` (the API counts them): `stored`,
        `retransmit`, the error's code (`overlap`, `checksum_mismatch`, ...), or `interrupted`
        (the connection dropped, Redis failed)."""
        try:
            receipt, result = await self._receive_chunk(user, file_id, request, body)
        except TransferError as exc:
            self.on_chunk(exc.code)
            raise
        except BaseException:
            self.on_chunk("interrupted")
            raise
        self.on_chunk(result)
        return receipt

    async def _receive_chunk(
        self, user: User, file_id: str, request: ChunkRequest, body: AsyncIterator[bytes]
    ) -> tuple[ChunkReceipt, str]:
        validate_file_id(file_id)
        content_range = parse_content_range(request.content_range)
        if content_range.total > self.settings.max_file_bytes:
            raise FileTooLarge(
                f"files may be at most {self.settings.max_file_bytes} bytes",
                max_file_bytes=self.settings.max_file_bytes,
            )
        if content_range.length > self.settings.max_chunk_bytes:
            raise ChunkTooLarge(
                f"chunks may be at most {self.settings.max_chunk_bytes} bytes",
                max_chunk_bytes=self.settings.max_chunk_bytes,
            )
        expected_body = HEADER_SIZE + content_range.length
        if request.content_length is not None and request.content_length.strip() != str(expected_body):
            raise LengthMismatch(f"the body must be {expected_body} bytes: the 12-byte header and the payload")
        file_name = decode_file_name(request.file_name)
        sha256 = check_sha256(request.sha256)

        stream = _Body(paced(body, self.settings.body_idle_timeout, self.settings.body_min_rate))  # core/body_pace.py
        raw_header = await stream.read_exact(HEADER_SIZE)
        if len(raw_header) < HEADER_SIZE:
            raise InvalidChunkHeader("the body is shorter than the 12-byte chunk header")
        header = decode_header(raw_header)
        check_header_matches(header, content_range)

        chunk = Chunk(content_range.start, content_range.end, header.crc32)
        token = secrets.token_hex(8)
        need = self.storage.allocation_for(content_range.length)
        # One round trip claims the range and holds its disk space; commit or release ends both.
        progress = await self._claim(user, file_id, chunk, content_range.total, token, need)
        if progress.outcome == Outcome.DUPLICATE:
            await self._drain(stream, chunk)
            return _receipt(file_id, progress), "retransmit"
        _raise_for(progress)
        try:
            await self.check_free_disk(need, int(progress.extra or 0))
            with _disk_full_is_507():
                try:
                    await self._write(file_id, stream, chunk, content_range.total, token)
                finally:
                    self.free_space.spent(need)
            progress = await self.repo.commit(file_id, token, chunk, file_name, sha256)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.release_claim(file_id, token)
            raise
        _raise_for(progress)
        if progress.state == UploadState.ASSEMBLING:
            await self.start_assembly(file_id, progress.snapshot)
        return _receipt(file_id, progress), "stored"

    async def check_free_disk(self, need: int, held_by_others: int) -> None:
        """Refuse a chunk whose `need` would take free space below the floor, counting what
        other chunks hold (read after its own hold was placed). Free space is measured at
        most every FT_FREE_SPACE_TTL seconds, in a thread, and again before a refusal
        (core/storage/base.py FreeSpace)."""
        if not await self.free_space.at_least(held_by_others + need + self.settings.min_free_bytes):
            raise InsufficientStorage("not enough free disk space to store this chunk; retry later")

    async def release_claim(self, file_id: str, token: str) -> None:
        """Free a failed chunk's range for its re-send. When Redis is away (restarting, failing
        over to a replica) the release is tried again in the background until it lands or the
        claim's lease would have ended anyway: a claim replicated to the new primary would
        otherwise refuse the client's re-send (409 overlap) for the whole lease."""
        try:
            await self.repo.release(file_id, token)
        except Exception as exc:
            log.warning("claim %s of %s not released (%s); retrying in the background", token, file_id, exc)
            self._in_background(self._release_later(file_id, token))

    async def settle(self) -> None:
        """At shutdown: let what runs in the background (queued assemblies, claim releases)
        finish, for up to SETTLE_SECONDS."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=SETTLE_SECONDS)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_later(self, file_id: str, token: str) -> None:
        give_up = time.monotonic() + self.settings.claim_lease
        while time.monotonic() < give_up:
            await asyncio.sleep(RELEASE_RETRY_SECONDS)
            try:
                await self.repo.release(file_id, token)
                return
            except Exception:
                continue

    async def _claim(self, user: User, file_id: str, chunk: Chunk, total: int, token: str, disk_bytes: int) -> Progress:
        args = (
            file_id,
            user.owner_id,
            user.is_admin,
            chunk.start,
            chunk.end,
            total,
            chunk.crc32,
            token,
            self.settings.claim_lease,
        )
        # A chunk at byte 0 is most often a new upload's first: with nothing of the upload on
        # disk either (two stats), its claim creates it, one round trip instead of two.
        create = chunk.start == 0 and not await has_record(self.storage, file_id)
        progress = await self.repo.claim(*args, create=create, limits=self.limits, disk_bytes=disk_bytes)
        if progress.outcome == Outcome.ABSENT:
            await self.restore_from_disk(file_id)
            progress = await self.repo.claim(*args, create=True, limits=self.limits, disk_bytes=disk_bytes)
        return progress

    async def _write(self, file_id: str, stream: _Body, chunk: Chunk, total: int, token: str) -> None:
        """Stream the payload to its offset, computing the CRC as it goes; never buffer it whole.
        Creating the file and syncing it run in a thread, off the event loop."""
        writer = await open_staged(self.storage, file_id, total)
        try:
            offset, limit, crc = chunk.start, chunk.end + 1, 0
            lease = self.settings.claim_lease
            renew_at = time.monotonic() + lease / 3
            async for piece in stream.rest():
                if offset + len(piece) > limit:
                    raise LengthMismatch("the payload is longer than Content-Range says")
                # Renew before writing: a piece arriving after a stall longer than the lease must
                # not land in a range that another chunk may have claimed and stored meanwhile.
                if time.monotonic() >= renew_at:
                    if not await self.repo.renew(file_id, token, lease):
                        raise Overlap("the chunk took too long and lost its claim; send it again")
                    renew_at = time.monotonic() + lease / 3
                crc = writer.write(piece, offset, crc)
                offset += len(piece)
            if offset != limit:
                raise LengthMismatch(
                    f"the payload is {offset - chunk.start} bytes; Content-Range says {limit - chunk.start}"
                )
            if crc != chunk.crc32:
                raise ChecksumMismatch("the payload's CRC-32 does not match the chunk header")
            await writer.commit(durable=self.settings.fsync_chunks)
        finally:
            writer.close()

    async def _drain(self, stream: _Body, chunk: Chunk) -> None:
        """A retransmission: read it (a client may not expect an early answer) and check it."""
        size, crc = 0, 0
        async for piece in stream.rest():
            size += len(piece)
            if size > chunk.end - chunk.start + 1:
                raise LengthMismatch("the payload is longer than Content-Range says")
            crc = crc32(piece, crc)
        if size != chunk.end - chunk.start + 1:
            raise LengthMismatch("the payload is shorter than Content-Range says")
        if crc != chunk.crc32:
            raise ChecksumMismatch("the payload's CRC-32 does not match the chunk header")

    async def start_assembly(self, file_id: str, snapshot: Snapshot | None = None) -> None:
        """Record the upload on disk (Redis may be lost before a worker runs), then queue its
        assembly without waiting for Redis to confirm (core/jobs.py AssemblyQueue): the answer
        goes out meanwhile. `snapshot`: the upload as the commit that completed it returned it
        (else it is read)."""
        upload: Upload | None
        if snapshot is not None:
            upload, chunks = snapshot.upload, snapshot.chunks
        else:
            upload, chunks = await self.repo.upload_and_chunks(file_id)
        if upload is not None:
            await run_blocking(self._record, file_id, upload, chunks)
        if self.enqueue_assembly is not None:
            self._in_background(self._enqueue(file_id))

    def _record(self, file_id: str, upload: Upload, chunks: list[Chunk]) -> None:
        try:
            self.write_manifest(upload, chunks)
        except OSError as exc:  # e.g. a full disk: the chunk is stored; assembly must still start
            log.warning("no manifest for %s before assembly: %s", file_id, exc)

    async def _enqueue(self, file_id: str) -> None:
        assert self.enqueue_assembly is not None
        try:
            await self.enqueue_assembly(file_id)
        except Exception as exc:
            # The chunk is stored and the upload is `assembling`, in the set that the persist
            # job sweeps: it enqueues every assembly nobody runs once FT_ASSEMBLY_LEASE passed.
            log.warning("assembly of %s not queued (%s); the persist job will queue it", file_id, exc)

    # --- reading ---------------------------------------------------------------
    async def load(self, file_id: str) -> Upload | None:
        """The upload from Redis, else restored from its manifest on disk."""
        return await load(self.repo, self.storage, file_id, self.enqueue_assembly)

    async def load_for(self, user: User, file_id: str) -> Upload:
        """The upload if `user` may see it; anyone else is told it does not exist."""
        validate_file_id(file_id)
        upload = await self.load(file_id)
        if upload is None or (upload.owner != user.owner_id and not user.is_admin):
            raise NotFound("no such upload")
        return upload

    async def delete(self, user: User, file_id: str) -> int:
        """Remove an upload or a complete file of `user`'s; returns the bytes freed."""
        await self.load_for(user, file_id)
        previous = await self.repo.tombstone(file_id)
        if previous == UploadState.ASSEMBLING:
            raise Assembling("a worker is assembling this file; try again in a moment")
        freed = await anyio.to_thread.run_sync(self.storage.remove_staged, file_id)
        freed += await anyio.to_thread.run_sync(self.storage.remove_final, file_id)
        await self.repo.forget(file_id)
        return freed

    async def completed_file(self, user: User, file_id: str) -> CompletedFile:
        return self.as_completed(await self.load_for(user, file_id))

    def as_completed(self, upload: Upload) -> CompletedFile:
        """What a download of `upload` serves; NotComplete unless it is complete."""
        file_id = upload.file_id
        if upload.state != UploadState.COMPLETE or not upload.sha256:
            raise NotComplete(f"the file is {upload.state}, not complete", state=upload.state)
        return CompletedFile(
            file_id=file_id,
            source=final_source(self.storage, file_id),
            size=upload.total,
            sha256=upload.sha256,
            completed_at=upload.completed_at or upload.updated_at,
            file_name=upload.file_name or file_id,
        )

    async def status(self, user: User, file_id: str) -> UploadStatus:
        upload = await self.load_for(user, file_id)
        deferred = upload.tus.deferred  # a tus upload whose length is not known yet
        complete = upload.state == UploadState.COMPLETE
        if complete:
            missing: list[tuple[int, int]] = []
        else:
            received = [(c.start, c.end) for c in await self.repo.chunks(file_id)]
            missing = [] if deferred else intervals.missing(received, upload.total)
        expires = None if complete else upload.updated_at + self.settings.stale_after
        return UploadStatus(
            file_id=file_id,
            state=upload.state,  # a StrEnum value; `expired` is never loaded
            total_bytes=None if deferred else upload.total,
            received_bytes=upload.received,
            next_expected_byte=upload.next_expected,
            missing_ranges=[list(gap) for gap in missing[:MAX_MISSING_RANGES]],
            missing_ranges_truncated=len(missing) > MAX_MISSING_RANGES,
            file_name=upload.file_name,
            created_at=iso(upload.created_at),
            updated_at=iso(upload.updated_at),
            expires_at=iso(expires),
            persisted_at=iso(upload.persisted_at),
            sha256=upload.sha256 if complete else None,
            error=upload.error if upload.state == UploadState.FAILED else None,
        )

    # --- durability --------------------------------------------------------------
    def write_manifest(self, upload: Upload, chunks: list[Chunk], persisted_at: float | None = None) -> None:
        write_manifest(self.storage, upload, chunks, persisted_at)

    async def restore_from_disk(self, file_id: str) -> bool:
        return await restore_from_disk(self.repo, self.storage, file_id, self.enqueue_assembly)


# --- durability: the records on disk, and Redis restored from them ---------------------------
def write_manifest(storage: ByteStore, upload: Upload, chunks: list[Chunk], persisted_at: float | None = None) -> None:
    """Record an upload beside its bytes, so that it survives the loss of Redis (blocking)."""
    storage.write_manifest(upload.file_id, Manifest.of(upload, chunks, persisted_at).to_json())


async def restore_from_disk(
    repo: UploadRepository, storage: ByteStore, file_id: str, enqueue_assembly: EnqueueAssembly | None = None
) -> bool:
    """Put an upload that Redis lost back from disk: a final file's meta, else a manifest; an
    upload restored `assembling` is queued for assembly again. Most calls are for a new
    upload's first chunk, with nothing on disk: no thread then when the store can look without
    waiting (two stats for the POSIX store). A record this release cannot
    read (written by a newer one, or damaged) is a 503 for its upload, and is left alone."""
    if not await has_record(storage, file_id):
        return False
    try:
        raw_meta = await anyio.to_thread.run_sync(storage.read_meta, file_id)
        if raw_meta is not None:
            return await repo.restore_file(FileMeta.from_json(raw_meta, file_id))
        raw = await anyio.to_thread.run_sync(storage.read_manifest, file_id)
        if raw is None:
            return False
        manifest = Manifest.from_json(raw, file_id)
    except RecordError as exc:
        log.error("upload %s not restored from disk: %s", file_id, exc)
        raise UnreadableRecord(f"the record of this upload on disk cannot be read ({exc})") from exc
    restored = await repo.restore_manifest(manifest)
    if restored and manifest.state == UploadState.ASSEMBLING and enqueue_assembly is not None:
        await enqueue_assembly(file_id)
    return restored


async def load(
    repo: UploadRepository, storage: ByteStore, file_id: str, enqueue_assembly: EnqueueAssembly | None = None
) -> Upload | None:
    """The upload from Redis, else restored from its records on disk."""
    upload = await repo.get(file_id)
    if upload is None and await restore_from_disk(repo, storage, file_id, enqueue_assembly):
        upload = await repo.get(file_id)
    return upload
