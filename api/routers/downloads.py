"""GET and HEAD /download/{file_id} (CONTRACT 6): ranges and conditionals in api/responses.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from api.deps import BearerToken, SettingsDep, user_for_token
from api.errors import documented_errors
from api.responses import RangeFileResponse
from api.routers.uploads import FileId, UploadServiceDep
from core.links import DownloadLinks

router = APIRouter(tags=["downloads"])


_STRING = {"schema": {"type": "string"}}
_VALIDATORS = {
    "ETag": {**_STRING, "required": True, "description": "strong: the file's SHA-256 in quotes"},
    "Last-Modified": {**_STRING, "required": True},
}
_FILE_HEADERS = {
    **_VALIDATORS,
    "Accept-Ranges": {**_STRING, "required": True, "description": "bytes"},
    "Content-Disposition": {**_STRING, "required": True, "description": "attachment with RFC 6266 filename*"},
    "Content-Length": {"schema": {"type": "integer"}, "required": True},
}
_BYTES = {"schema": {"type": "string", "format": "binary"}}
_CONDITIONALS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": text}
    for name, text in [
        ("Range", "bytes=START-END, bytes=START-, bytes=-SUFFIX, or several separated by commas"),
        ("If-Range", "an ETag or HTTP date: serve the Range only if the file still matches"),
        ("If-Match", "ETags; 412 unless one matches"),
        ("If-None-Match", "ETags; 304 if one matches"),
        ("If-Modified-Since", "HTTP date; 304 if not modified since"),
        ("If-Unmodified-Since", "HTTP date; 412 if modified since"),
    ]
]
DOWNLOAD_ROUTE: dict[str, Any] = {
    "response_class": RangeFileResponse,
    "status_code": 200,
    "responses": {
        200: {
            "description": "the whole file",
            "content": {"application/octet-stream": _BYTES},
            "headers": _FILE_HEADERS,
        },
        206: {
            "description": "one range (with Content-Range), or multipart/byteranges for several",
            "content": {"application/octet-stream": _BYTES, "multipart/byteranges": _BYTES},
            "headers": {**_FILE_HEADERS, "Content-Range": {**_STRING, "description": "for a single range"}},
        },
        304: {"description": "not modified (If-None-Match / If-Modified-Since)", "headers": _VALIDATORS},
        **documented_errors(
            {
                400: "invalid_file_id",
                403: "invalid_link: a signed link that expired, was altered, or is for another file",
                404: "not_found: no such file, or another user's",
                409: "not_complete",
                412: "precondition_failed (If-Match / If-Unmodified-Since)",
                416: "range_not_satisfiable, with Content-Range: bytes */SIZE",
            }
        ),
    },
    "openapi_extra": {"parameters": _CONDITIONALS},
}


async def get_links(request: Request) -> DownloadLinks:
    links: DownloadLinks = request.app.state.links
    return links


LinksDep = Annotated[DownloadLinks, Depends(get_links)]
_LINK_EXPIRES = Query(description="signed links only: when the link expires (Unix seconds)")
_LINK_SIGNATURE = Query(description="signed links only: the link's signature (from POST /files/{file_id}/link)")
DOWNLOAD_DESCRIPTION = """
The bytes of a `complete` file, with HTTP range semantics as nginx answers them: one range,
an open or a suffix range → 206 with `Content-Range`; several → 206 `multipart/byteranges`;
unsatisfiable or malformed `bytes=` → 416. Strong `ETag` (the SHA-256), `Last-Modified`,
`If-Range`, and the conditional headers. `Content-Disposition` carries the original name.

Two ways in: an `Authorization: Bearer` token (the file's owner, or an admin), **or** a
short-lived signed link from `POST /files/{file_id}/link` (`?expires=...&sig=...`, no header
at all: what a browser's plain download needs). An expired, altered or foreign link → 403
`invalid_link`.

Example: `curl -H "Authorization: Bearer $TOKEN" -H 'Range: bytes=0-1023' localhost:8000/download/report.pdf`
"""


@router.get("/download/{file_id}", summary="Download a file", description=DOWNLOAD_DESCRIPTION, **DOWNLOAD_ROUTE)
@router.head(
    "/download/{file_id}", summary="Download (headers only)", description=DOWNLOAD_DESCRIPTION, **DOWNLOAD_ROUTE
)
async def download(
    file_id: FileId,
    request: Request,
    token: BearerToken,
    uploads: UploadServiceDep,
    links: LinksDep,
    settings: SettingsDep,
    expires: Annotated[str | None, _LINK_EXPIRES] = None,
    sig: Annotated[str | None, _LINK_SIGNATURE] = None,
) -> RangeFileResponse:
    if expires is not None or sig is not None:
        found = await links.resolve(file_id, expires or "", sig or "")
    else:
        found = await uploads.completed_file(await user_for_token(request, token), file_id)
    source = found.source
    # X-Accel-Redirect needs a file nginx can read: only a store with local paths has one.
    accel_uri = None
    if settings.accel_redirect and source.relative_path is not None:
        accel_uri = f"{settings.accel_prefix}/{source.relative_path}"
    return RangeFileResponse(
        source,
        found.size,
        found.sha256,
        found.completed_at,
        found.file_name,
        read_size=settings.download_read_size,
        accel_uri=accel_uri,
        max_ranges=settings.max_ranges,
    )
