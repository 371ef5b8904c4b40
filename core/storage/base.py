"""The storage seam: every byte the service keeps goes through a `ByteStore`.

Routers, the upload and tus services, the worker's assembly and the periodic jobs name no
path and open no file: they ask the store. The POSIX filesystem (core/storage/posix.py) is
the first store; another one (an object store, docs/STORAGE.md) is one more module and one
more line in `open_store`.

The calling convention is the same for every method: it may block (disk, network), so code
on the event loop calls it in a thread (`core.threads.run_blocking` on the chunk path,
`anyio.to_thread.run_sync` elsewhere). The exceptions are the
writer's: `StagedWriter.write` is called for each piece of a request body as it arrives and
must only copy bytes into something fast (the page cache, a buffer); `StagedWriter.commit`
is a coroutine that leaves the loop itself when it has to wait.

Abilities a store may or may not have are separate Protocols, discovered with `isinstance`
(as tusd's composer discovers a data store's optional interfaces), never assumed:
- `LocalPaths`: a final file is a local file (sendfile, `http.response.pathsend`,
  nginx X-Accel-Redirect). Without it, downloads stream through `read_final`.
- `Concatenates`: the store builds a tus concatenation itself (copy_file_range). Without
  it, `concatenate` below copies the parts through a reader and a writer.
- `QuickMetadata`: the store's metadata operations wait on no device (an open or a stat of
  a cached inode): it hands out a writer on existing staged bytes, and says whether a record
  exists, on the event loop. `open_staged` and `has_record` below then skip the thread
  hop that would otherwise cost every chunk far more than the open itself (bench/sync_stall.py,
  64 uploads of 64 KiB chunks with FT_FSYNC_CHUNKS=1 on tmpfs: p50 1.3-1.9x that of main
  when the open, as well as the sync, went through a thread).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

from core.checksums import crc32
from core.single_flight import SingleFlight
from core.threads import run_blocking

log = logging.getLogger("ft.storage")

# A manifest (an upload not complete) or a meta (a complete file): JSON objects, whose fields
# the upload service and the assembly own; the store only keeps them whole and atomically.
Record = dict[str, Any]
COPY_BLOCK = 4 * 1024 * 1024


class StagedWriter(Protocol):
    """An upload's staged bytes, open for writing pieces at their offsets."""

    def write(self, piece: bytes, offset: int, crc: int = 0) -> int:
        """Store `piece` at `offset` and return the CRC-32 `crc` continued over it. Runs on
        the event loop: fast, no waiting on a device. A full disk is InsufficientStorage."""
        ...

    async def commit(self, durable: bool) -> None:
        """The bytes written so far are about to be recorded (in Redis) as stored: make them
        part of the staged bytes, and durable when `durable` (FT_FSYNC_CHUNKS). POSIX: nothing
        to do, or an fdatasync in a thread; an object store would upload the spooled chunk."""
        ...

    def close(self) -> None:
        """Release the writer; cheap enough for the event loop. An error it raises (a network
        filesystem reporting a delayed write) fails the chunk: it is not acknowledged."""
        ...


class ByteReader(Protocol):
    """A staged or final file, open for reading at offsets."""

    size: int

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`; b"" past the end."""
        ...

    def readinto(self, offset: int, buffer: memoryview) -> int:
        """Fill `buffer` from `offset`; the number of bytes read (0 past the end)."""
        ...

    def close(self) -> None: ...


class ByteStore(Protocol):
    """Staged uploads (bytes arriving at offsets, and a manifest), final files (bytes and a
    meta), and the free space they may still take. File ids are validated by the store."""

    # --- staged uploads ----------------------------------------------------------
    def open_staged(self, file_id: str, total: int | None) -> StagedWriter:
        """A writer on `file_id`'s staged bytes, created if needed, `total` bytes long when
        `total` is known (None: a tus upload of deferred length, left as it is)."""
        ...

    def has_staged(self, file_id: str) -> bool:
        """Whether staged bytes of `file_id` exist."""
        ...

    def read_staged(self, file_id: str) -> ByteReader:
        """The staged bytes; FileNotFoundError when there are none."""
        ...

    def sync_staged(self, file_id: str) -> None:
        """Make every byte written to `file_id` durable (no-op when there is nothing staged)."""
        ...

    def staged_ids(self) -> list[str]:
        """The ids with anything staged (bytes or a manifest)."""
        ...

    def staged_modified_at(self, file_id: str) -> float | None:
        """When `file_id`'s staged bytes last changed (epoch seconds); None when absent."""
        ...

    def write_manifest(self, file_id: str, manifest: Record) -> None:
        """Replace the upload's manifest atomically and durably."""
        ...

    def read_manifest(self, file_id: str) -> Record | None: ...

    def remove_staged(self, file_id: str) -> int:
        """Remove the staged bytes and manifest (the manifest first: a half-removed upload is
        never restored). Returns the bytes freed; 0 when nothing was there."""
        ...

    # --- final files -------------------------------------------------------------
    def publish(self, file_id: str, meta: Record) -> None:
        """Make the (verified) staged bytes the final file and record `meta`, durably.
        Safe to repeat after a crash at any point; FileNotFoundError when neither the
        staged nor the final bytes exist."""
        ...

    def has_final(self, file_id: str) -> bool: ...

    def read_final(self, file_id: str) -> ByteReader:
        """The final file's bytes; FileNotFoundError when absent."""
        ...

    def read_meta(self, file_id: str) -> Record | None: ...

    def final_ids(self) -> list[str]:
        """The ids of every final file (or of a meta without its bytes)."""
        ...

    def remove_final(self, file_id: str) -> int:
        """Remove the final file and its meta (meta first); returns the bytes freed."""
        ...

    def has_record(self, file_id: str) -> bool:
        """Whether a meta or a manifest of `file_id` exists."""
        ...

    # --- space ---------------------------------------------------------------------
    def free_bytes(self) -> int:
        """Bytes the store can still take (measured now; see FreeSpace for a cached view)."""
        ...

    def allocation_for(self, length: int) -> int:
        """Space that writing `length` bytes at some offset may take (whole blocks, and the
        partial blocks at either end). Pure arithmetic: fine on the event loop."""
        ...


@runtime_checkable
class LocalPaths(Protocol):
    """A store whose final files are local files that a server may send itself."""

    def final_path(self, file_id: str) -> Path:
        """The final file of `file_id` (it may not exist)."""
        ...

    def final_relative_path(self, file_id: str) -> str:
        """The same, relative to the root of the final files (what an nginx `alias` maps)."""
        ...


@runtime_checkable
class QuickMetadata(Protocol):
    """A store that can open existing staged bytes, and look for records, on the event loop."""

    def open_staged_nowait(self, file_id: str, total: int | None) -> StagedWriter | None:
        """A writer when the staged bytes exist (at `total` bytes when known) and opening them
        waits on no device; None when `open_staged` must run (create, resize)."""
        ...

    def has_record(self, file_id: str) -> bool: ...


async def has_record(store: ByteStore, file_id: str) -> bool:
    """`store.has_record` for code on the event loop (every new upload's first chunk asks)."""
    if isinstance(store, QuickMetadata):
        return store.has_record(file_id)
    return await run_blocking(store.has_record, file_id)


async def open_staged(store: ByteStore, file_id: str, total: int | None) -> StagedWriter:
    """`store.open_staged` for code on the event loop: in a thread, unless the store can open
    existing staged bytes without waiting (most chunks of an upload after its first)."""
    if isinstance(store, QuickMetadata):
        writer = store.open_staged_nowait(file_id, total)
        if writer is not None:
            return writer
    return await run_blocking(store.open_staged, file_id, total)


@runtime_checkable
class Concatenates(Protocol):
    """A store that builds a concatenation of staged uploads itself (e.g. in the kernel)."""

    def concatenate(self, file_id: str, parts: list[str]) -> None:
        """Write the parts' staged bytes one after another as `file_id`'s staged bytes."""
        ...


@dataclass(frozen=True, slots=True)
class FileSource:
    """A final file as a download serves it: `open` (blocking: call it in a thread) gives its
    bytes; `local_path` and `relative_path` are there when the store has LocalPaths."""

    open: Callable[[], ByteReader]
    local_path: Path | None = None
    relative_path: str | None = None


def final_source(store: ByteStore, file_id: str) -> FileSource:
    """`file_id`'s final file in `store`, with its local path if the store can give one."""
    opener = partial(store.read_final, file_id)
    if isinstance(store, LocalPaths):
        return FileSource(opener, store.final_path(file_id), store.final_relative_path(file_id))
    return FileSource(opener)


async def concatenate(store: ByteStore, file_id: str, parts: list[str]) -> None:
    """Stage the parts' bytes one after another as `file_id`'s, durably. The store does it
    itself when it can; otherwise one copy through a reader and a writer (reads in a thread)."""
    if isinstance(store, Concatenates):
        await anyio.to_thread.run_sync(store.concatenate, file_id, parts)
        return
    readers: list[ByteReader] = []
    try:
        for part in parts:  # FileNotFoundError before a byte is written
            readers.append(await anyio.to_thread.run_sync(store.read_staged, part))
        writer = await anyio.to_thread.run_sync(store.open_staged, file_id, sum(r.size for r in readers))
        try:
            offset = 0
            for reader in readers:
                done = 0
                while done < reader.size:
                    block = await anyio.to_thread.run_sync(reader.read, done, min(COPY_BLOCK, reader.size - done))
                    if not block:
                        raise OSError(f"a part of {file_id} shrank while being copied")
                    writer.write(block, offset + done)
                    done += len(block)
                offset += reader.size
            await writer.commit(durable=True)
        finally:
            writer.close()
    finally:
        for reader in readers:
            reader.close()


def write_piece_crc(piece: bytes, crc: int) -> int:
    """The CRC-32 `crc` continued over `piece` (for stores' `StagedWriter.write`)."""
    return crc32(piece, crc)


class FreeSpace:
    """The store's free bytes for admitting chunks, measured at most every `max_age` seconds
    (in a thread, never on the event loop) instead of once per chunk.

    Between two measurements the bytes this process wrote are taken off the last measure
    (`spent`), so the estimate only errs on the safe side for this process's own writes;
    the writes of other processes count once their hold is released and the next measure
    is taken (within `max_age`), while they are written their hold counts (Redis). A refusal
    is never made on an old measure (`at_least`): space that returned counts at once.

    An estimate past its age is still answered at once while a new measure is taken in the
    background: if every chunk waited for it, all of them would queue behind one thread's
    answer on a busy event loop (seen as a 1-2 s p99 with 256 devices)."""

    def __init__(self, store: ByteStore, max_age: float = 1.0) -> None:
        self._store = store
        self._max_age = max_age
        self._measured = 0
        self._spent = 0
        self._expires = 0.0
        self._measured_at = float("-inf")
        self._measures: SingleFlight[None] = SingleFlight()  # the measure under way
        self._refreshing: asyncio.Task[None] | None = None

    def spent(self, nbytes: int) -> None:
        """`nbytes` were just written (or may have been): count them until the next measure."""
        self._spent += nbytes

    async def bytes(self, fresh: bool = False) -> int:
        """The estimate; `fresh`: from a measure taken after this call started (waits for it).
        The first call waits for the first measure, and every call does when `max_age` is 0
        (FT_FREE_SPACE_TTL=0: a measure per chunk); otherwise they answer from the last one."""
        asked = time.monotonic()
        if fresh or self._max_age <= 0:
            await self._measure(lambda: self._measured_at < asked)
        elif self._measured_at == float("-inf"):  # any measure will do
            await self._measure(lambda: self._measured_at == float("-inf"))
        elif asked >= self._expires and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        return self._measured - self._spent

    async def _refresh(self) -> None:
        try:
            await self._measure(lambda: time.monotonic() >= self._expires)
        except OSError as exc:  # the last estimate stands; the next call past its age tries again
            log.warning("free space not measured: %s", exc)
        finally:
            self._refreshing = None

    async def _measure(self, needed: Callable[[], bool]) -> None:
        """Until `needed()` is false, wait for the measure under way, or start one. Every caller
        waits on the same one: behind a lock, each caller would be woken in turn, one turn of a
        busy event loop each (256 first chunks of a new API process: p90 1.5 s in this wait)."""
        while needed():
            await self._measures.run("free", self._take_measure)

    async def _take_measure(self) -> None:
        spent_before = self._spent
        started = time.monotonic()
        measured = await run_blocking(self._store.free_bytes)
        self._measured, self._measured_at = measured, started
        # Writes that ended while measuring may or may not be in it: keep counting them.
        self._spent -= spent_before
        self._expires = time.monotonic() + self._max_age

    async def at_least(self, nbytes: int) -> bool:
        """Whether `nbytes` are free: yes from the cached estimate, no only from a new measure."""
        return await self.bytes() >= nbytes or await self.bytes(fresh=True) >= nbytes
