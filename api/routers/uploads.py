"""POST /upload/{file_id} and GET /status/{file_id} (CONTRACT 4 and 5)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from api.deps import CurrentUser
from core.uploads import ChunkRequest, UploadService

router = APIRouter(tags=["uploads"])


def get_upload_service(request: Request) -> UploadService:
    return request.app.state.uploads


UploadServiceDep = Annotated[UploadService, Depends(get_upload_service)]


class ChunkReceiptModel(BaseModel):
    file_id: str
    state: str
    received_bytes: int
    total_bytes: int
    next_expected_byte: int


class StatusModel(BaseModel):
    file_id: str
    state: str
    total_bytes: int
    received_bytes: int
    next_expected_byte: int
    missing_ranges: list[tuple[int, int]]
    file_name: str | None
    created_at: str | None
    updated_at: str | None
    expires_at: str | None
    persisted_at: str | None
    sha256: str | None
    error: str | None


_ERRORS = {
    400: {"description": "invalid_file_id, invalid_content_range, invalid_chunk_header, length_mismatch, checksum_mismatch"},
    401: {"description": "not_authenticated"},
    404: {"description": "not_found"},
    409: {"description": "overlap, total_mismatch, already_complete, upload_failed"},
    413: {"description": "chunk_too_large, file_too_large"},
    507: {"description": "insufficient_storage"},
}


@router.post(
    "/upload/{file_id}",
    response_model=ChunkReceiptModel,
    responses=_ERRORS,
    openapi_extra={
        "parameters": [
            {"name": "Content-Range", "in": "header", "required": True, "schema": {"type": "string"},
             "description": "bytes START-END/TOTAL (END inclusive)"},
            {"name": "X-File-Name", "in": "header", "required": False, "schema": {"type": "string"}},
            {"name": "X-File-SHA256", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            "description": "12-byte chunk header (START mod 2^32, END mod 2^32, CRC-32; big-endian), then the payload",
        },
    },
)
async def upload_chunk(file_id: str, request: Request, user: CurrentUser, uploads: UploadServiceDep) -> ChunkReceiptModel:
    headers = request.headers
    chunk = ChunkRequest(
        content_range=headers.get("content-range"),
        content_length=headers.get("content-length"),
        file_name=headers.get("x-file-name"),
        sha256=headers.get("x-file-sha256"),
    )
    receipt = await uploads.receive_chunk(user, file_id, chunk, request.stream())
    return ChunkReceiptModel.model_validate(receipt, from_attributes=True)


@router.get("/status/{file_id}", response_model=StatusModel, responses={404: {"description": "not_found"}})
async def upload_status(file_id: str, user: CurrentUser, uploads: UploadServiceDep) -> dict:
    return await uploads.status(user, file_id)


@router.delete(
    "/upload/{file_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"description": "not_found"}, 409: {"description": "assembling"}},
)
async def delete_upload(file_id: str, user: CurrentUser, uploads: UploadServiceDep) -> Response:
    """Cancel an upload (staged bytes and state) or delete a complete file. Not in CONTRACT v1."""
    await uploads.delete(user, file_id)
    return Response(status_code=204)
