"""The records of an upload, typed, and the one place their on-disk formats are written and read.

- `UploadState`: where an upload stands (the values are those of Redis and of the wire).
- `Chunk`: a stored byte range and its CRC-32.
- `TusFields`: what a tus upload keeps besides (metadata, deferred length, concatenation).
- `Upload`: an upload as the repository (core/state.py) reads it back.
- `Manifest`: staging/<id>/manifest.json, written so an upload survives the loss of Redis.
- `FileMeta`: files/<id>/meta.json, the durable record of a complete file.

Both files carry `"version"`. A file without one was written by an earlier release and has
version 1's shape; a version above the one this release writes is refused
(`UnsupportedRecordVersion`) rather than half-read: it was written by a newer release, and
guessing could lose what it recorded. How a record maps onto Redis is the repository's
business; how it maps onto JSON is this module's alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from core import intervals

MANIFEST_VERSION = 1
META_VERSION = 1


class UploadState(StrEnum):
    """The state machine of core/uploads.py; `expired` marks an upload being removed (never shown)."""

    UPLOADING = "uploading"
    ASSEMBLING = "assembling"
    COMPLETE = "complete"
    FAILED = "failed"
    EXPIRED = "expired"


# The states a client may see (GET /status, the files list): every state but `expired`.
VisibleState = Literal["uploading", "assembling", "complete", "failed"]


class RecordError(ValueError):
    """A manifest or meta.json that cannot be read as a record."""


class UnsupportedRecordVersion(RecordError):
    """A record written by a newer release than this one."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Stored bytes [start, end] (inclusive) and their CRC-32."""

    start: int
    end: int
    crc32: int

    @classmethod
    def parse(cls, member: bytes | str) -> Chunk:
        """From the repository's `START:END:CRC` form."""
        text = member.decode() if isinstance(member, bytes) else member
        start, end, crc = text.split(":")
        return cls(int(start), int(end), int(crc))

    @property
    def member(self) -> str:
        return f"{self.start}:{self.end}:{self.crc32}"

    @property
    def size(self) -> int:
        return self.end - self.start + 1


TusConcat = Literal["partial", "final"]


@dataclass(frozen=True, slots=True)
class TusFields:
    """What a tus upload (core/tus.py) keeps besides an ordinary upload's fields: the raw
    Upload-Metadata, whether its length is still deferred (`total` then holds the largest
    allowed size), and its part in a concatenation (a final lists its partial uploads)."""

    metadata: str = ""
    deferred: bool = False
    concat: TusConcat | None = None
    parts: tuple[str, ...] = ()

    def as_strings(self) -> dict[str, str]:
        """The `tus_*` strings: a manifest's `tus` object, and the fields the repository stores."""
        out: dict[str, str] = {}
        if self.metadata:
            out["tus_metadata"] = self.metadata
        if self.deferred:
            out["tus_deferred"] = "1"
        if self.concat is not None:
            out["tus_concat"] = self.concat
        if self.concat == "final":
            out["tus_parts"] = json.dumps(list(self.parts))
        return out

    @classmethod
    def from_strings(cls, raw: Mapping[str, str]) -> TusFields:
        concat = raw.get("tus_concat") or None
        if concat not in (None, "partial", "final"):
            raise RecordError(f"tus_concat {concat!r} is neither partial nor final")
        parts = json.loads(raw["tus_parts"]) if concat == "final" and raw.get("tus_parts") else []
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            raise RecordError("tus_parts is not a list of upload ids")
        return cls(
            metadata=raw.get("tus_metadata", ""),
            deferred=raw.get("tus_deferred") == "1",
            concat=concat,  # type: ignore[arg-type]  # checked above
            parts=tuple(parts),
        )


@dataclass(slots=True)
class Upload:
    """An upload as Redis holds it (read by `UploadRepository.get`)."""

    file_id: str
    owner: str
    total: int
    state: UploadState
    received: int
    next_expected: int
    file_name: str | None = None
    expected_sha256: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    persisted_at: float | None = None
    sha256: str | None = None
    error: str | None = None
    completed_at: float | None = None
    provisional: bool = False  # created by a first chunk that is not committed yet
    tus: TusFields = field(default_factory=TusFields)


def _check_version(doc: Mapping[str, Any], kind: str, current: int) -> int:
    version = doc.get("version", 1)  # earlier releases wrote no version: version 1's shape
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordError(f"{kind}: version {version!r} is not a positive integer")
    if version > current:
        raise UnsupportedRecordVersion(
            f"{kind} is version {version}, written by a newer release; this release reads up to version {current}"
        )
    return version


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _opt_float(value: Any) -> float | None:
    return float(value) if value not in (None, "") else None


@dataclass(frozen=True, slots=True)
class Manifest:
    """staging/<id>/manifest.json: everything needed to put an upload back into Redis."""

    file_id: str
    owner: str
    total: int
    state: UploadState
    created_at: float
    updated_at: float
    chunks: tuple[Chunk, ...] = ()
    file_name: str | None = None
    expected_sha256: str | None = None
    persisted_at: float | None = None
    error: str | None = None
    tus: TusFields = field(default_factory=TusFields)

    @classmethod
    def of(cls, upload: Upload, chunks: Iterable[Chunk], persisted_at: float | None = None) -> Manifest:
        return cls(
            file_id=upload.file_id,
            owner=upload.owner,
            total=upload.total,
            state=upload.state,
            created_at=upload.created_at,
            updated_at=upload.updated_at,
            chunks=tuple(chunks),
            file_name=upload.file_name,
            expected_sha256=upload.expected_sha256,
            persisted_at=persisted_at,
            error=upload.error,
            tus=upload.tus,
        )

    @property
    def received(self) -> int:
        return sum(c.size for c in self.chunks)

    @property
    def next_expected(self) -> int:
        return intervals.first_missing(((c.start, c.end) for c in self.chunks), self.total)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "file_id": self.file_id,
            "owner": self.owner,
            "total": self.total,
            "state": str(self.state),
            "file_name": self.file_name,
            "expected_sha256": self.expected_sha256,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "persisted_at": self.persisted_at,
            "error": self.error,
            # for people reading the file; derived from `chunks` when read back
            "received_ranges": [list(r) for r in intervals.merge((c.start, c.end) for c in self.chunks)],
            "chunks": [[c.start, c.end, c.crc32] for c in self.chunks],
            "tus": self.tus.as_strings(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], file_id: str) -> Manifest:
        """`file_id` is the directory's: the record is of the upload it lies in."""
        _check_version(doc, f"the manifest of {file_id}", MANIFEST_VERSION)
        try:
            return cls(
                file_id=file_id,
                owner=str(doc["owner"]),
                total=int(doc["total"]),
                state=UploadState(doc["state"]),
                created_at=float(doc["created_at"]),
                updated_at=float(doc["updated_at"]),
                chunks=tuple(Chunk(int(s), int(e), int(crc)) for s, e, crc in doc.get("chunks", [])),
                file_name=_opt_str(doc.get("file_name")),
                expected_sha256=_opt_str(doc.get("expected_sha256")),
                persisted_at=_opt_float(doc.get("persisted_at")),
                error=_opt_str(doc.get("error")),
                tus=TusFields.from_strings({str(k): str(v) for k, v in (doc.get("tus") or {}).items()}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"the manifest of {file_id} is not readable: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class FileMeta:
    """files/<id>/meta.json: owner, size, digest, name and times of a complete file."""

    file_id: str
    owner: str
    size: int
    sha256: str
    created_at: float
    completed_at: float
    file_name: str | None = None
    expected_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "file_id": self.file_id,
            "owner": self.owner,
            "size": self.size,
            "sha256": self.sha256,
            "expected_sha256": self.expected_sha256,
            "file_name": self.file_name,
            "created_at": self.created_at,
            "completed_at": self.completed_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], file_id: str) -> FileMeta:
        _check_version(doc, f"the meta.json of {file_id}", META_VERSION)
        try:
            return cls(
                file_id=file_id,
                owner=str(doc["owner"]),
                size=int(doc["size"]),
                sha256=str(doc["sha256"]),
                created_at=float(doc["created_at"]),
                completed_at=float(doc["completed_at"]),
                file_name=_opt_str(doc.get("file_name")),
                expected_sha256=_opt_str(doc.get("expected_sha256")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"the meta.json of {file_id} is not readable: {exc!r}") from exc
