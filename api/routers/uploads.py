"""POST /upload/{file_id} and GET /status/{file_id} (CONTRACT 4 and 5)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, Field

from api.deps import CurrentUser
from api.errors import documented_errors
from core.file_ids import FILE_ID_PATTERN
from core.uploads import ChunkRequest, UploadService

router = APIRouter(tags=["uploads"])


async def get_upload_service(request: Request) -> UploadService:
    return request.app.state.uploads


UploadServiceDep = Annotated[UploadService, Depends(get_upload_service)]

# The schema tells clients what a file_id may be; core/file_ids.py enforces it (400 invalid_file_id).
FileId = Annotated[str, Path(
    description="1-128 characters of [A-Za-z0-9._-], not starting with '.'",
    json_schema_extra={"pattern": f"^{FILE_ID_PATTERN}$", "minLength": 1, "maxLength": 128},
)]
State = Literal["uploading", "assembling", "complete", "failed"]


class ChunkReceiptModel(BaseModel):
    file_id: str
    state: State
    received_bytes: int
    total_bytes: int
    next_expected_byte: int


class StatusModel(BaseModel):
    file_id: str
    state: State
    total_bytes: int | None = Field(description="null while a tus upload's length is deferred")
    received_bytes: int
    next_expected_byte: int
    # [start, end_inclusive] pairs; not tuple[int, int], whose `prefixItems` schema trips some
    # OpenAPI tools (schemathesis 4 among them).
    missing_ranges: list[Annotated[list[int], Field(min_length=2, max_length=2)]]
    missing_ranges_truncated: bool = Field(
        False, description="true when there are more gaps than the first 1000 listed in missing_ranges")
    file_name: str | None
    created_at: str | None
    updated_at: str | None
    expires_at: str | None
    persisted_at: str | None
    sha256: str | None
    error: str | None


_ERRORS = documented_errors({
    400: "invalid_file_id, invalid_content_range, invalid_chunk_header, length_mismatch, checksum_mismatch, "
         "invalid_file_name, invalid_sha256",
    404: "not_found: no such upload, or another user's",
    409: "overlap, total_mismatch, already_complete, upload_failed, too_many_chunks",
    413: "chunk_too_large, file_too_large, quota_exceeded (a new upload would pass the user's declared-bytes quota)",
    429: "too_many_uploads (the user's open uploads are at FT_MAX_OPEN_UPLOADS), "
         "rate_limited (uploads created faster than FT_UPLOAD_CREATE_RATE per minute)",
    507: "insufficient_storage",
})


@router.post(
    "/upload/{file_id}",
    response_model=ChunkReceiptModel,
    responses=_ERRORS,
    openapi_extra={
        "parameters": [
            {"name": "Content-Range", "in": "header", "required": True,
             "schema": {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"},
             "description": "bytes START-END/TOTAL (END inclusive)"},
            {"name": "X-File-Name", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "the original name, percent-encoded UTF-8 (at most 1024 bytes, no control characters)"},
            {"name": "X-File-SHA256", "in": "header", "required": False,
             "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{64}$"},
             "description": "hex SHA-256 of the whole file"},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "12-byte chunk header (START mod 2^32, END mod 2^32, CRC-32; big-endian), then the payload",
        },
    },
)
async def upload_chunk(file_id: FileId, request: Request, user: CurrentUser, uploads: UploadServiceDep) -> ChunkReceiptModel:
    headers = request.headers
    chunk = ChunkRequest(
        content_range=headers.get("content-range"),
        content_length=headers.get("content-length"),
        file_name=headers.get("x-file-name"),
        sha256=headers.get("x-file-sha256"),
    )
    receipt = await uploads.receive_chunk(user, file_id, chunk, request.stream())
    return ChunkReceiptModel.model_validate(receipt, from_attributes=True)


@router.get(
    "/status/{file_id}",
    response_model=StatusModel,
    responses=documented_errors({400: "invalid_file_id", 404: "not_found: no such upload, or another user's"}),
)
async def upload_status(file_id: FileId, user: CurrentUser, uploads: UploadServiceDep) -> dict:
    return await uploads.status(user, file_id)


@router.delete(
    "/upload/{file_id}",
    status_code=204,
    response_class=Response,
    responses=documented_errors({
        400: "invalid_file_id",
        404: "not_found: no such upload, or another user's",
        409: "assembling: the file is being assembled; retry when it is complete or failed",
    }),
)
async def delete_upload(file_id: FileId, user: CurrentUser, uploads: UploadServiceDep) -> Response:
    """Cancel an upload (staged bytes and state) or delete a complete file. Not in CONTRACT v1."""
    await uploads.delete(user, file_id)
    return Response(status_code=204)
