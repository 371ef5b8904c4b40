"""POST /upload/{file_id} and GET /status/{file_id} (CONTRACT 4 and 5)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel

from api.deps import CurrentUser
from api.errors import documented_errors
from core.file_ids import FILE_ID_PATTERN
from core.records import VisibleState
from core.uploads import ChunkRequest, UploadService, UploadStatus
from core.users import User

router = APIRouter(tags=["uploads"])


async def get_upload_service(request: Request) -> UploadService:
    service: UploadService = request.app.state.uploads
    return service


UploadServiceDep = Annotated[UploadService, Depends(get_upload_service)]

# The schema tells clients what a file_id may be; core/file_ids.py enforces it (400 invalid_file_id).
FileId = Annotated[
    str,
    Path(
        description="1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        json_schema_extra={"pattern": f"^{FILE_ID_PATTERN}$", "minLength": 1, "maxLength": 128},
    ),
]


class ChunkReceiptModel(BaseModel):
    file_id: str
    state: VisibleState
    received_bytes: int
    total_bytes: int
    next_expected_byte: int


UPLOAD_DESCRIPTION = """
Sends one chunk of a file. The first chunk creates the upload, which belongs to you from then
on. Chunks may come **in any order and in parallel**; resend whatever `GET /status` lists as
missing after an interruption.

**Headers:** `Content-Range: bytes START-END/TOTAL` (END inclusive, TOTAL the size of the
whole file) and `Content-Type: application/octet-stream`. Optional, remembered from the first
chunk that has them: `X-File-Name` (the original name, percent-encoded UTF-8) and
`X-File-SHA256` (hex digest of the whole file: the file becomes `complete` only if it matches).

**Body: a 12-byte chunk header, then the payload** (exactly END-START+1 bytes):

| bytes | field | encoding |
|---|---|---|
| 0-3 | START mod 2^32 | unsigned 32-bit, big-endian |
| 4-7 | END mod 2^32 (inclusive) | unsigned 32-bit, big-endian |
| 8-11 | CRC-32 of the payload (IEEE, as Python's `zlib.crc32`) | unsigned 32-bit, big-endian |

The header must agree with `Content-Range` (modulo 2^32, so files over 4 GiB work) and the
CRC with the payload, or the chunk is refused (400) and nothing of it is kept.

**Worked example:** the 12-byte file `hello world\\n` in two chunks.

| chunk | Content-Range | payload | CRC-32 | body (hex) |
|---|---|---|---|---|
| 1 | `bytes 0-5/12` | `hello ` | `0xed81f9f6` | `00000000 00000005 ed81f9f6` + `68656c6c6f20` |
| 2 | `bytes 6-11/12` | `world\\n` | `0xdd3861a8` | `00000006 0000000b dd3861a8` + `776f726c640a` |

In Python: `struct.pack(">III", start % 2**32, end % 2**32, zlib.crc32(payload)) + payload`.
Past 4 GiB the header wraps: bytes 21474836490-21474836589 (5 GiB + 10) carry START 10 and
END 109 in the header while `Content-Range` has the full numbers.

**Answers:** 200 with the upload's counters. A chunk that exactly repeats a stored one (same
START, END and CRC) is acknowledged again; any other overlap → 409 `overlap` (with
`next_expected_byte`). When the last missing byte arrives the state becomes `assembling`; a
worker verifies every chunk's CRC-32 and the SHA-256, then the file is `complete` (or `failed`
with an `error`).
"""

_ERRORS = documented_errors(
    {
        400: "invalid_file_id, invalid_content_range, invalid_chunk_header, length_mismatch, checksum_mismatch, "
        "invalid_file_name, invalid_sha256",
        404: "not_found: no such upload, or another user's",
        409: "overlap, total_mismatch, already_complete, upload_failed, too_many_chunks",
        413: "chunk_too_large, file_too_large, "
        "quota_exceeded (a new upload would pass the user's declared-bytes quota)",
        429: "too_many_uploads (the user's open uploads are at FT_MAX_OPEN_UPLOADS), "
        "rate_limited (uploads created faster than FT_UPLOAD_CREATE_RATE per minute)",
        507: "insufficient_storage",
    }
)


@router.post(
    "/upload/{file_id}",
    summary="Upload one chunk",
    description=UPLOAD_DESCRIPTION,
    response_model=ChunkReceiptModel,
    responses=_ERRORS,
    openapi_extra={
        "parameters": [
            {
                "name": "Content-Range",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"},
                "description": "bytes START-END/TOTAL (END inclusive)",
            },
            {
                "name": "X-File-Name",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": "the original name, percent-encoded UTF-8 (at most 1024 bytes, no control characters)",
            },
            {
                "name": "X-File-SHA256",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"},
                "description": "hex SHA-256 of the whole file",
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "12-byte chunk header (START mod 2^32, END mod 2^32, CRC-32; big-endian), then the payload",
        },
    },
)
async def upload_chunk(file_id: FileId, request: Request, user: CurrentUser) -> Response:
    return await answer_chunk(request, user, file_id)


async def answer_chunk(request: Request, user: User, file_id: str) -> Response:
    """The operation itself, also served by the fast lane (api/fast_lane.py)."""
    uploads: UploadService = request.app.state.uploads
    headers = request.headers
    chunk = ChunkRequest(
        content_range=headers.get("content-range"),
        content_length=headers.get("content-length"),
        file_name=headers.get("x-file-name"),
        sha256=headers.get("x-file-sha256"),
    )
    receipt = await uploads.receive_chunk(user, file_id, chunk, request.stream())
    # Serialized here, once: returning the model would have FastAPI validate it again against
    # response_model (which stays, for the schema) on the hottest route.
    answer = ChunkReceiptModel.model_validate(receipt, from_attributes=True)
    return Response(answer.model_dump_json(), media_type="application/json")


@router.get(
    "/status/{file_id}",
    summary="Status of an upload",
    description="""
Where an upload stands: `state` (`uploading`, `assembling`, `complete`, `failed`), bytes
received, `next_expected_byte` (the first byte not yet received) and `missing_ranges`
(`[[start, end_inclusive], ...]`: exactly what to send to resume), the original `file_name`,
times (ISO 8601 UTC; `expires_at`: when cleanup removes it if nothing more arrives), `sha256`
once complete, `error` when failed.

Example: `{"file_id": "hello.txt", "state": "uploading", "total_bytes": 12, "received_bytes": 6,
"next_expected_byte": 6, "missing_ranges": [[6, 11]], ...}`
""",
    response_model=UploadStatus,
    responses=documented_errors({400: "invalid_file_id", 404: "not_found: no such upload, or another user's"}),
)
async def upload_status(file_id: FileId, user: CurrentUser, uploads: UploadServiceDep) -> UploadStatus:
    return await uploads.status(user, file_id)


@router.delete(
    "/upload/{file_id}",
    summary="Cancel an upload or delete a file",
    description="The owner (or an admin) cancels an upload, removing its received bytes, or deletes a "
    "complete file: 204, and the id answers 404 from then on. Refused with 409 `assembling` "
    "while a worker assembles the file. (Beyond CONTRACT v1.)",
    status_code=204,
    response_class=Response,
    responses=documented_errors(
        {
            400: "invalid_file_id",
            404: "not_found: no such upload, or another user's",
            409: "assembling: the file is being assembled; retry when it is complete or failed",
        }
    ),
)
async def delete_upload(file_id: FileId, user: CurrentUser, uploads: UploadServiceDep) -> Response:
    await uploads.delete(user, file_id)
    return Response(status_code=204)
