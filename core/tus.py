"""Resumable uploads as tus 1.0 and the IETF draft see them: an upload of server-chosen id,
appended to at its offset, one streaming request at a time.

A tus upload is an ordinary upload (same Redis state, staging file, worker assembly). What
is particular to it lives here:
- append: a PATCH body streams to its offset under one claim of the rest of the upload;
  every `tus_commit_bytes` and when the body ends or is cut, the bytes stored so far are
  recorded as a chunk [start, end, CRC-32] (so a client cut mid-PATCH resumes where the
  bytes stopped, and the worker's CRC re-check still covers every byte). With an
  Upload-Checksum, nothing is recorded before the whole body matched it.
- deferred length: `total` holds the largest allowed size until a request declares it.
- concatenation: partial uploads wait, complete, until a final takes them; the final is
  created with every part's chunks moved to its offsets, and a worker copies the parts'
  bytes into it once (the store's own way when it has one: copy_file_range) before the usual
  verification.

The HTTP side (header names, status codes, the two protocols) is in api/routers/tus.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import anyio

from core.body_pace import paced
from core.checksums import crc32
from core.errors import (
    AlreadyComplete,
    ConcatenationError,
    FileTooLarge,
    InsufficientStorage,
    InvalidTusHeader,
    NotFound,
    OffsetMismatch,
    Overlap,
    TusChecksumMismatch,
    UnsupportedChecksumAlgorithm,
    UploadFailed,
    UploadLengthExceeded,
)
from core.file_ids import validate_file_id
from core.records import TusConcat, TusFields, UploadState
from core.state import Chunk, Outcome, Progress, Upload, UploadRepository
from core.storage import ByteStore, StagedWriter, concatenate, open_staged
from core.uploads import MAX_FILE_NAME_BYTES, UploadService, raise_refused_creation
from core.users import User

TUS_VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
)
MAX_METADATA_BYTES = 16 * 1024


# --- headers ----------------------------------------------------------------------
def parse_metadata(raw: str | None) -> dict[str, bytes]:
    """Upload-Metadata: `key base64value` pairs separated by commas; a value may be absent."""
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidTusHeader(f"Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")
    pairs: dict[str, bytes] = {}
    for item in raw.split(","):
        parts = item.strip().split(" ")
        key = parts[0]
        if not key or len(parts) > 2 or not key.isascii() or not key.isprintable():
            raise InvalidTusHeader(f"Upload-Metadata: {item.strip()!r} is not `key base64value`")
        if key in pairs:
            raise InvalidTusHeader(f"Upload-Metadata names {key!r} twice")
        pairs[key] = _b64(parts[1], "Upload-Metadata") if len(parts) == 2 else b""
    return pairs


def encode_metadata(pairs: dict[str, bytes]) -> str:
    return ",".join(f"{k} {base64.b64encode(v).decode()}" if v else k for k, v in pairs.items())


def _b64(text: str, header: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidTusHeader(f"{header}: {text!r} is not base64") from None


def file_name_from(metadata: dict[str, bytes]) -> str | None:
    """The `filename` (or `name`, as Uppy sends it) entry, checked as X-File-Name is."""
    raw = metadata.get("filename") or metadata.get("name")
    if not raw:
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidTusHeader("Upload-Metadata: filename must be UTF-8") from None
    if len(raw) > MAX_FILE_NAME_BYTES or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidTusHeader(
            f"Upload-Metadata: filename must be at most {MAX_FILE_NAME_BYTES} bytes without control characters"
        )
    return name


class _Crc32:
    """CRC-32 with the hashlib interface; its digest is the 4 bytes big-endian."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes) -> None:
        self.value = crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


CHECKSUM_ALGORITHMS: dict[str, Callable[[], _Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "crc32": _Crc32,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
}


@dataclass(frozen=True, slots=True)
class Checksum:
    algorithm: str
    digest: bytes

    def hasher(self) -> _Hasher:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_checksum(raw: str | None) -> Checksum | None:
    """Upload-Checksum: `algorithm base64digest`."""
    if raw is None:
        return None
    parts = raw.strip().split(" ")
    if len(parts) != 2 or not parts[0]:
        raise InvalidTusHeader("Upload-Checksum must be `algorithm base64digest`")
    algorithm = parts[0].lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise UnsupportedChecksumAlgorithm(
            f"Upload-Checksum: {parts[0]!r} is not one of {', '.join(CHECKSUM_ALGORITHMS)}",
            supported=list(CHECKSUM_ALGORITHMS),
        )
    digest = _b64(parts[1], "Upload-Checksum")
    if len(digest) != len(CHECKSUM_ALGORITHMS[algorithm]().digest()):
        raise InvalidTusHeader(f"Upload-Checksum: a {algorithm} digest has another length")
    return Checksum(algorithm, digest)


def parse_size(raw: str | None, header: str) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 19:
        raise InvalidTusHeader(f"{header} must be a non-negative integer")
    return int(text)


def part_ids(concat: str) -> list[str]:
    """The upload ids of `final;URL URL ...` (absolute or relative URLs, or bare ids)."""
    urls = concat.split(";", 1)[1].split()
    if not urls:
        raise ConcatenationError("Upload-Concat: final names no partial uploads")
    ids = []
    for url in urls:
        candidate = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        try:
            ids.append(validate_file_id(candidate))
        except Exception:
            raise ConcatenationError(f"Upload-Concat: {url!r} is not an upload URL of this server") from None
    return ids


# --- requests and answers ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NewUpload:
    length: int | None  # None: deferred
    metadata: dict[str, bytes]
    concat: str | None = None  # "partial", or "final;URL URL ..."


@dataclass(frozen=True, slots=True)
class Append:
    offset: int
    content_length: int | None = None
    checksum: Checksum | None = None
    upload_length: int | None = None  # a deferred length, declared now
    complete: bool = False  # IETF Upload-Complete: ?1 (this body ends the upload)


@dataclass(frozen=True, slots=True)
class TusUpload:
    """What HEAD (and every answer) says of an upload."""

    file_id: str
    offset: int
    length: int | None
    metadata: str
    expires_at: float | None
    state: UploadState
    concat: str | None

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset == self.length


def describe(upload: Upload, stale_after: int) -> TusUpload:
    tus = upload.tus
    offset = upload.next_expected if upload.state == UploadState.UPLOADING else upload.total
    concat: str | None = tus.concat
    if concat == "final":
        concat = "final;" + " ".join(f"/files/{p}" for p in tus.parts)
    return TusUpload(
        file_id=upload.file_id,
        offset=offset,
        length=None if tus.deferred else upload.total,
        metadata=tus.metadata,
        expires_at=None if upload.state == UploadState.COMPLETE else upload.updated_at + stale_after,
        state=upload.state,
        concat=concat,
    )


class TusService:
    def __init__(self, uploads: UploadService) -> None:
        self.uploads = uploads
        self.settings = uploads.settings
        self.repo = uploads.repo
        self.storage = uploads.storage

    # --- creation ------------------------------------------------------------------
    async def create(self, user: User, new: NewUpload) -> TusUpload:
        if new.concat and new.concat.startswith("final"):
            return await self._create_final(user, new)
        if new.length is not None and new.length > self.settings.max_file_bytes:
            raise FileTooLarge(
                f"files may be at most {self.settings.max_file_bytes} bytes",
                max_file_bytes=self.settings.max_file_bytes,
            )
        concat: TusConcat | None = "partial" if new.concat == "partial" else None
        tus = TusFields(encode_metadata(new.metadata), deferred=new.length is None, concat=concat)
        total = self.settings.max_file_bytes if new.length is None else new.length
        file_id = await self._create(user, total, file_name_from(new.metadata), tus)
        await self._touch(file_id, new.length)  # the staging file exists from now on
        upload = await self.uploads.load_for(user, file_id)
        if upload.state == UploadState.ASSEMBLING:  # an empty file
            await self.uploads.start_assembly(file_id)
        return describe(upload, self.settings.stale_after)

    async def _create(
        self, user: User, total: int, file_name: str | None, tus: TusFields, chunks: list[Chunk] | None = None
    ) -> str:
        while True:
            file_id = secrets.token_hex(16)
            progress = await self.repo.create(
                file_id,
                user.owner_id,
                total,
                self.uploads.limits,
                file_name=file_name,
                tus=tus,
                complete_chunks=chunks,
            )
            if progress.outcome == Outcome.CREATED:
                return file_id
            raise_refused_creation(progress)  # else the id was taken: draw another

    async def _create_final(self, user: User, new: NewUpload) -> TusUpload:
        """A final concatenation: every part a finished partial upload of the caller's; the
        final starts `assembling` with the parts' chunks moved to their offsets."""
        ids = part_ids(new.concat or "")
        chunks: list[Chunk] = []
        base = 0
        for part_id in ids:
            try:
                part = await self.uploads.load_for(user, part_id)
            except NotFound:
                raise ConcatenationError(f"no partial upload {part_id}") from None
            if part.tus.concat != "partial":
                raise ConcatenationError(f"{part_id} is not a partial upload")
            if part.state != UploadState.UPLOADING or part.tus.deferred or part.received != part.total:
                raise ConcatenationError(f"partial upload {part_id} is not finished")
            chunks += [Chunk(c.start + base, c.end + base, c.crc32) for c in await self.repo.chunks(part_id)]
            base += part.total
        if base > self.settings.max_file_bytes:
            raise FileTooLarge(
                f"files may be at most {self.settings.max_file_bytes} bytes",
                max_file_bytes=self.settings.max_file_bytes,
            )
        tus = TusFields(encode_metadata(new.metadata), concat="final", parts=tuple(ids))
        file_id = await self._create(user, base, file_name_from(new.metadata), tus, chunks)
        await self.uploads.start_assembly(file_id)
        return describe(await self.uploads.load_for(user, file_id), self.settings.stale_after)

    # --- reading and termination -------------------------------------------------------
    async def info(self, user: User, file_id: str) -> TusUpload:
        return describe(await self.uploads.load_for(user, file_id), self.settings.stale_after)

    async def terminate(self, user: User, file_id: str) -> None:
        await self.uploads.delete(user, file_id)

    # --- appending -----------------------------------------------------------------
    async def append(self, user: User, file_id: str, request: Append, body: AsyncIterator[bytes]) -> TusUpload:
        upload = await self.uploads.load_for(user, file_id)
        if upload.tus.concat == "final":
            raise AlreadyComplete("a final concatenation takes no PATCH", state=upload.state)
        current = describe(upload, self.settings.stale_after)
        if request.offset != current.offset:
            raise OffsetMismatch(
                f"the upload's offset is {current.offset}, not {request.offset}", upload_offset=current.offset
            )
        if upload.state == UploadState.FAILED:
            raise UploadFailed(f"the upload failed: {upload.error}", error=upload.error)
        length = current.length
        if request.upload_length is not None or (request.complete and request.content_length is not None):
            declared = (
                request.upload_length
                if request.upload_length is not None
                else request.offset + (request.content_length or 0)
            )
            length = await self._declare(upload, current, declared)
        if upload.state != UploadState.UPLOADING or request.content_length == 0:
            if request.content_length:
                raise AlreadyComplete(f"the upload is {upload.state}", state=upload.state)
            return await self.info(user, file_id)
        limit = length if length is not None else self.settings.max_file_bytes
        if request.content_length is not None:
            if request.offset + request.content_length > limit:
                raise UploadLengthExceeded(f"the body goes past the upload's length of {limit} bytes")
            limit = request.offset + request.content_length
        # The body's room on disk is held before a byte is written (as a chunk's is), by the
        # claim itself (one round trip), which renews both; a body that idles or trickles is dropped.
        token = secrets.token_hex(8)
        paced_body = paced(body, self.settings.body_idle_timeout, self.settings.body_min_rate)
        try:
            end, last = await self._stream(upload, request, limit, length, paced_body, token)
        finally:
            # Until free space is measured again, count what the body may have taken.
            self.uploads.free_space.spent(self.storage.allocation_for(limit - request.offset))
        if request.complete and length is None:
            await self._declare(upload, current, end)
        if last is not None and current.length is not None:
            # The length was known before this request, so only the counters changed: the last
            # commit returned them, and its time is the one stored (no read back from Redis).
            progress, when = last
            snapshot = progress.snapshot  # the manifest's material, when this commit completed it
            after: Upload | None = replace(
                upload,
                state=progress.state or upload.state,
                received=progress.received,
                total=progress.total,
                next_expected=progress.next_expected,
                updated_at=when,
            )
        else:  # one read for both: whether to start the assembly, and the answer's headers
            after, snapshot = await self.repo.get(file_id), None
        if after is None:  # deleted meanwhile (or Redis lost it): answered as HEAD would be
            return await self.info(user, file_id)
        if after.state == UploadState.ASSEMBLING:
            await self.uploads.start_assembly(file_id, snapshot)
        return describe(after, self.settings.stale_after)

    async def _declare(self, upload: Upload, current: TusUpload, total: int) -> int:
        if current.length is not None:
            if total != current.length:
                raise InvalidTusHeader(f"the upload's length is {current.length} bytes, not {total}")
            return total
        if total > self.settings.max_file_bytes:
            raise FileTooLarge(
                f"files may be at most {self.settings.max_file_bytes} bytes",
                max_file_bytes=self.settings.max_file_bytes,
            )
        if total < current.offset:
            raise InvalidTusHeader(f"Upload-Length {total} is below the {current.offset} bytes already stored")
        await self._touch(upload.file_id, total)
        progress = await self.repo.declare_length(upload.file_id, total)
        if progress.outcome == Outcome.TOO_SMALL:
            raise InvalidTusHeader(f"Upload-Length {total} is below the {progress.received} bytes already stored")
        return total

    async def _touch(self, file_id: str, total: int | None) -> None:
        """Create the staged bytes (at `total` bytes when known), in a thread."""
        writer = await open_staged(self.storage, file_id, total)
        writer.close()

    async def _stream(
        self, upload: Upload, request: Append, limit: int, length: int | None, body: AsyncIterator[bytes], token: str
    ) -> tuple[int, tuple[Progress, float] | None]:
        """Write the body at the offset under a claim of [offset, limit); record what arrived as
        chunks. Returns the offset after the last byte stored, and what the last commit of the
        body returned with its time (None when the body was empty)."""
        file_id, start = upload.file_id, request.offset
        lease = self.settings.claim_lease
        total = length if length is not None else upload.total  # the length may be declared just now
        need = self.storage.allocation_for(limit - start)
        progress = await self.repo.claim(
            file_id, upload.owner, True, start, limit - 1, total, 0, token, lease, create=False, disk_bytes=need
        )
        _refuse(progress, start)
        try:
            await self.uploads.check_free_disk(need, int(progress.extra or 0))
        except InsufficientStorage:
            await self.repo.release(file_id, token)
            raise
        writer = await open_staged(self.storage, file_id, length)
        segment = _Segment(start)
        checksum = request.checksum
        hasher = checksum.hasher() if checksum is not None else None
        every = self.settings.tus_commit_bytes
        renew_at = time.monotonic() + lease / 3
        try:
            async for piece in body:
                if not piece:
                    continue
                if segment.end + len(piece) > limit:
                    raise UploadLengthExceeded(f"the body goes past the upload's length of {limit} bytes")
                if time.monotonic() >= renew_at:
                    if not await self.repo.renew(file_id, token, lease):
                        raise Overlap("the PATCH stalled and lost its claim; send it again")
                    renew_at = time.monotonic() + lease / 3
                segment.add(piece, writer.write(piece, segment.end, segment.crc))
                if hasher is not None:
                    hasher.update(piece)
                elif segment.size >= every:
                    await self._commit(file_id, token, segment, writer, keep_lease=lease)
                    renew_at = time.monotonic() + lease / 3
            if checksum is not None and hasher is not None and hasher.digest() != checksum.digest:
                raise TusChecksumMismatch(f"the body does not match its Upload-Checksum ({checksum.algorithm})")
            last = await self._commit(file_id, token, segment, writer, durable=self.settings.fsync_chunks)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if hasher is None:  # keep what arrived: the client resumes from there
                    await self._commit(file_id, token, segment, writer, quiet=True)
                # Tried again in the background while Redis is away (a failover), as a chunk's is:
                # a claim left standing would refuse the client's resume (409) for the whole lease.
                await self.uploads.release_claim(file_id, token)
            raise
        finally:
            writer.close()
        if last is None:  # nothing to record: the claim (and its disk hold) is still there
            await self.repo.release(file_id, token)
        # else the final commit ended the claim and its disk hold (it keeps none: no keep_lease)
        return segment.end, last

    async def _commit(
        self,
        file_id: str,
        token: str,
        segment: _Segment,
        writer: StagedWriter,
        durable: bool = False,
        keep_lease: float | None = None,
        quiet: bool = False,
    ) -> tuple[Progress, float] | None:
        """Record the segment's bytes as a chunk, once the store has them (`writer.commit`):
        what the commit returned and its time (None when there was nothing to record).
        `quiet`: after a failure, keep what can be kept and raise nothing."""
        if segment.size == 0:
            return None
        try:
            await writer.commit(durable)
        except Exception:
            if quiet:
                return None
            raise
        chunk = Chunk(segment.start, segment.end - 1, segment.crc)
        now = time.time()
        progress = await self.repo.commit(file_id, token, chunk, None, None, now=now, keep_lease=keep_lease)
        segment.restart()
        if progress.outcome != Outcome.COMMITTED and not quiet:
            raise Overlap("the PATCH lost its claim on the upload; send it again from the current offset")
        return progress, now


class _Segment:
    """The bytes of a PATCH written since the last commit: [start, end) and their CRC-32."""

    def __init__(self, start: int) -> None:
        self.start = self.end = start
        self.crc = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    def add(self, piece: bytes, crc: int) -> None:
        """`piece` was stored after the segment's bytes; `crc` is the segment's CRC-32 with it."""
        self.crc = crc
        self.end += len(piece)

    def restart(self) -> None:
        self.start, self.crc = self.end, 0


def _refuse(progress: Progress, offset: int) -> None:
    match progress.outcome:
        case Outcome.CLAIMED:
            return
        case Outcome.NOT_FOUND | Outcome.ABSENT:
            raise NotFound("no such upload")
        case Outcome.ALREADY_COMPLETE:
            raise AlreadyComplete(f"the upload is {progress.state}", state=progress.state)
        case Outcome.UPLOAD_FAILED:
            raise UploadFailed(f"the upload failed: {progress.extra}", error=progress.extra)
        case _:  # overlap with a PATCH still writing, or a total that changed meanwhile
            raise OffsetMismatch(
                "another request is writing to this upload; ask for its offset and retry",
                upload_offset=progress.next_expected,
            )


# --- concatenation (run by the worker) ---------------------------------------------
def parts_of(upload: Upload) -> list[str]:
    """The partial uploads a final concatenation is made of (empty for any other upload)."""
    return list(upload.tus.parts) if upload.tus.concat == "final" else []


async def build_concatenation(storage: ByteStore, file_id: str, parts: list[str]) -> None:
    """Write the parts' staged bytes one after another into the final's staged bytes: one
    copy (inside the kernel when the store can: core/storage/base.py `concatenate`)."""
    await concatenate(storage, file_id, parts)


async def forget_parts(repo: UploadRepository, storage: ByteStore, parts: list[str]) -> None:
    """The parts' bytes now live in the final file: remove them."""
    for part in parts:
        if await repo.tombstone(part) in (None, UploadState.ASSEMBLING):
            continue
        await anyio.to_thread.run_sync(storage.remove_staged, part)
        await repo.forget(part)
