"""The web page for people (GET /) and the API docs (GET /docs): static files, no CDN.

Every script is an external file under /static (the Content-Security-Policy forbids inline
ones); the vendored Uppy and Swagger UI builds are in api/static/vendor/ (`make web-assets`).
"""

from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page itself is revalidated on every load, so a new release shows at once.
_PAGE_HEADERS = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


@router.get("/docs")
async def docs() -> FileResponse:
    return FileResponse(STATIC_DIR / "docs.html", headers=_PAGE_HEADERS)


class _RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers revalidate on every use (ETag → 304), so that the page's
    scripts never lag behind the API after an upgrade."""

    def file_response(
        self, full_path: str | PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> StaticFiles:
    return _RevalidatedStaticFiles(directory=STATIC_DIR)
