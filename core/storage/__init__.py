"""Where the service's bytes live: the ByteStore seam (base.py) and its stores.

`open_store(settings)` is the one place that chooses a store; an object-store backend would
be one more module here and one more branch below (docs/STORAGE.md)."""

from __future__ import annotations

from core.config import Settings
from core.storage.base import (
    ByteReader,
    ByteStore,
    Concatenates,
    FileSource,
    FreeSpace,
    LocalPaths,
    QuickMetadata,
    Record,
    StagedWriter,
    concatenate,
    final_source,
    has_record,
    open_staged,
)
from core.storage.posix import PosixStore, local_file, write_json_atomic

# The POSIX store under its former name (tests and tools that build one from Settings).
Storage = PosixStore


def open_store(settings: Settings) -> ByteStore:
    """The store FT_DATA_DIR names: the POSIX filesystem."""
    return PosixStore(settings)


__all__ = [
    "ByteReader",
    "ByteStore",
    "Concatenates",
    "FileSource",
    "FreeSpace",
    "LocalPaths",
    "PosixStore",
    "QuickMetadata",
    "Record",
    "StagedWriter",
    "Storage",
    "concatenate",
    "final_source",
    "has_record",
    "local_file",
    "open_staged",
    "open_store",
    "write_json_atomic",
]
