"""GET and HEAD /download/{file_id} (CONTRACT 6): ranges and conditionals in api/responses.py."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, SettingsDep
from api.responses import RangeFileResponse
from api.routers.uploads import UploadServiceDep

router = APIRouter(tags=["downloads"])


@router.api_route(
    "/download/{file_id}",
    methods=["GET", "HEAD"],
    response_class=RangeFileResponse,
    status_code=200,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
        206: {"description": "one range, or multipart/byteranges for several"},
        304: {"description": "not modified (If-None-Match / If-Modified-Since)"},
        404: {"description": "not_found"},
        409: {"description": "not_complete"},
        412: {"description": "precondition_failed (If-Match / If-Unmodified-Since)"},
        416: {"description": "range_not_satisfiable, with Content-Range: bytes */SIZE"},
    },
)
async def download(file_id: str, user: CurrentUser, uploads: UploadServiceDep, settings: SettingsDep) -> RangeFileResponse:
    found = await uploads.completed_file(user, file_id)
    accel_uri = f"{settings.accel_prefix}/{file_id}/data" if settings.accel_redirect else None
    return RangeFileResponse(
        found.path, found.size, found.sha256, found.completed_at, found.file_name,
        read_size=settings.download_read_size, accel_uri=accel_uri,
    )
