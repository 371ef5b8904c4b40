"""A ByteStore with no filesystem at all: every staged and final byte in memory.

It exists to prove the seam (tests/fast/test_store_seam.py): the API, the tus service and the
worker's assembly run on it unchanged, so none of them reaches past the store to a path.
It has neither optional ability (no LocalPaths, no Concatenates): downloads stream through
`read_final`, a tus concatenation is copied through a reader and a writer.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from core.checksums import crc32
from core.file_ids import validate_file_id
from core.storage import Record

BLOCK = 4096


@dataclass
class _Staged:
    data: bytearray = field(default_factory=bytearray)
    manifest: Record | None = None
    modified_at: float = field(default_factory=time.time)


@dataclass
class _Final:
    data: bytes
    meta: Record


class MemoryReader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset : offset + size]

    def readinto(self, offset: int, buffer: memoryview) -> int:
        piece = self._data[offset : offset + len(buffer)]
        buffer[: len(piece)] = piece
        return len(piece)

    def close(self) -> None:
        pass


class MemoryWriter:
    def __init__(self, store: MemoryStore, file_id: str) -> None:
        self._store, self._file_id = store, file_id

    def write(self, piece: bytes, offset: int, crc: int = 0) -> int:
        with self._store.lock:
            staged = self._store.staged.setdefault(self._file_id, _Staged())
            if len(staged.data) < offset + len(piece):
                staged.data.extend(bytes(offset + len(piece) - len(staged.data)))
            staged.data[offset : offset + len(piece)] = piece
            staged.modified_at = time.time()
        return crc32(piece, crc)

    async def commit(self, durable: bool) -> None:
        if durable:
            self._store.syncs += 1

    def close(self) -> None:
        pass


class MemoryStore:
    """Thread-safe: the app (event loop and its threads) and the in-process worker share it."""

    def __init__(self, capacity: int = 1 << 40) -> None:
        self.lock = threading.Lock()
        self.staged: dict[str, _Staged] = {}
        self.finals: dict[str, _Final] = {}
        self.capacity = capacity
        self.syncs = 0

    def open_staged(self, file_id: str, total: int | None) -> MemoryWriter:
        validate_file_id(file_id)
        with self.lock:
            staged = self.staged.setdefault(file_id, _Staged())
            if total is not None and len(staged.data) != total:
                del staged.data[total:]
                staged.data.extend(bytes(total - len(staged.data)))
        return MemoryWriter(self, file_id)

    def has_staged(self, file_id: str) -> bool:
        return validate_file_id(file_id) in self.staged

    def read_staged(self, file_id: str) -> MemoryReader:
        with self.lock:
            if validate_file_id(file_id) not in self.staged:
                raise FileNotFoundError(file_id)
            return MemoryReader(bytes(self.staged[file_id].data))

    def sync_staged(self, file_id: str) -> None:
        self.syncs += 1

    def staged_ids(self) -> list[str]:
        with self.lock:
            return list(self.staged)

    def staged_modified_at(self, file_id: str) -> float | None:
        staged = self.staged.get(validate_file_id(file_id))
        return None if staged is None else staged.modified_at

    def write_manifest(self, file_id: str, manifest: Record) -> None:
        with self.lock:
            self.staged.setdefault(validate_file_id(file_id), _Staged()).manifest = copy.deepcopy(manifest)

    def read_manifest(self, file_id: str) -> Record | None:
        staged = self.staged.get(validate_file_id(file_id))
        return None if staged is None or staged.manifest is None else copy.deepcopy(staged.manifest)

    def remove_staged(self, file_id: str) -> int:
        with self.lock:
            staged = self.staged.pop(validate_file_id(file_id), None)
        return 0 if staged is None else len(staged.data)

    def publish(self, file_id: str, meta: Record) -> None:
        with self.lock:
            staged = self.staged.pop(validate_file_id(file_id), None)
            if staged is not None:
                self.finals[file_id] = _Final(bytes(staged.data), copy.deepcopy(meta))
            elif file_id in self.finals:
                self.finals[file_id].meta = copy.deepcopy(meta)
            else:
                raise FileNotFoundError(f"neither staged nor final data exists for {file_id}")

    def has_final(self, file_id: str) -> bool:
        return validate_file_id(file_id) in self.finals

    def read_final(self, file_id: str) -> MemoryReader:
        final = self.finals.get(validate_file_id(file_id))
        if final is None:
            raise FileNotFoundError(file_id)
        return MemoryReader(final.data)

    def read_meta(self, file_id: str) -> Record | None:
        final = self.finals.get(validate_file_id(file_id))
        return None if final is None else copy.deepcopy(final.meta)

    def final_ids(self) -> list[str]:
        with self.lock:
            return list(self.finals)

    def remove_final(self, file_id: str) -> int:
        with self.lock:
            final = self.finals.pop(validate_file_id(file_id), None)
        return 0 if final is None else len(final.data)

    def has_record(self, file_id: str) -> bool:
        return self.read_meta(file_id) is not None or self.read_manifest(file_id) is not None

    def free_bytes(self) -> int:
        with self.lock:
            used = sum(len(s.data) for s in self.staged.values()) + sum(len(f.data) for f in self.finals.values())
        return self.capacity - used

    def allocation_for(self, length: int) -> int:
        return (length + BLOCK - 1) // BLOCK * BLOCK + BLOCK
