"""The files list (`GET /files`): one owner's uploads and files, or everybody's, newest first.

Redis keeps an index per owner and one of everybody's (core/state.py), so a page costs one
range read and one pipelined read of the page's hashes, whatever the number of files. The
indexes are kept by the same scripts that create, restore and remove uploads. When Redis
lost everything (no `indexed` marker), the first list request or persist sweep rebuilds them
from what Redis still knows and from the records on disk (staging manifests, files' meta).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from core.errors import InvalidRequest, Unavailable, UnreadableRecord
from core.file_ids import FILE_ID_PATTERN
from core.maintenance import JobBusy, job_lock
from core.records import UploadState
from core.state import Upload, UploadRepository
from core.storage import ByteStore
from core.uploads import EnqueueAssembly, iso, restore_from_disk

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# Long enough for a rebuild over many files on disk; other requests wait for it, then list.
REBUILD_WAIT = 300.0
_FILE_ID_RE = re.compile(FILE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class FilesPage:
    items: list[Upload]
    next_cursor: str | None


def encode_cursor(created_at: float, file_id: str) -> str:
    """An opaque position: the last item's (created_at, file_id)."""
    raw = f"{created_at!r}/{file_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    problem = InvalidRequest("cursor is not one this server handed out; start again without it")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        score_text, file_id = raw.split("/", 1)
        score = float(score_text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise problem from None
    if not math.isfinite(score) or not _FILE_ID_RE.fullmatch(file_id):
        raise problem
    return score, file_id


async def list_files(
    repo: UploadRepository,
    storage: ByteStore,
    owner_id: str | None,
    limit: int,
    cursor: str | None,
    enqueue_assembly: EnqueueAssembly | None = None,
) -> FilesPage:
    """A page of `owner_id`'s uploads (everybody's for None), newest first. The indexes are
    rebuilt first if Redis lost them (uploads restored `assembling` go to `enqueue_assembly`)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be 1-{MAX_LIMIT}")
    before = decode_cursor(cursor) if cursor else None
    try:
        await ensure_files_index(repo, storage, enqueue_assembly)
    except JobBusy:
        raise Unavailable("the files list is being rebuilt after a loss of Redis; retry in a minute") from None
    entries = await repo.newest_first(owner_id, limit + 1, before)
    page, more = entries[:limit], len(entries) > limit
    uploads = await repo.get_many([file_id for file_id, _ in page])
    # An entry whose upload is being removed right now is left out; the cursor still moves past it.
    items = [upload for upload in uploads if upload is not None]
    next_cursor = encode_cursor(page[-1][1], page[-1][0]) if more else None
    return FilesPage(items, next_cursor)


def item_fields(upload: Upload) -> dict[str, Any]:
    """The list's view of one upload (CONTRACT 10)."""
    return {
        "file_id": upload.file_id,
        "file_name": upload.file_name,
        "state": upload.state,
        "total_bytes": upload.total,
        "received_bytes": upload.received,
        "created_at": iso(upload.created_at),
        "updated_at": iso(upload.updated_at),
        "sha256": upload.sha256 if upload.state == UploadState.COMPLETE else None,
    }


async def ensure_files_index(
    repo: UploadRepository, storage: ByteStore, enqueue_assembly: EnqueueAssembly | None = None
) -> bool:
    """Rebuild the list indexes if Redis lost them; True when this call rebuilt them."""
    if await repo.files_indexed():
        return False
    async with job_lock(repo, "files-index", wait=REBUILD_WAIT) as keep:
        if await repo.files_indexed():  # another request rebuilt them while this one waited
            return False
        # Uploads Redis still has (not complete yet): index them from their hashes.
        async for file_id in repo.active_ids():
            await keep()
            await repo.reindex(file_id)
        # Everything with a record on disk: index it, restoring it into Redis if it was lost.
        for listing in (storage.final_ids, storage.staged_ids):
            for file_id in await anyio.to_thread.run_sync(listing):
                await keep()
                if not await repo.reindex(file_id):
                    # a record this release cannot read (logged) is not listed until it can be
                    with contextlib.suppress(UnreadableRecord):
                        await restore_from_disk(repo, storage, file_id, enqueue_assembly)
        await repo.mark_files_indexed()
    return True
