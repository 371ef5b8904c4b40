"""The web page for people (GET /) and the API docs (GET /docs): static files, no CDN.

Every script is an external file under /static (the Content-Security-Policy forbids inline
ones); the vendored Uppy and Swagger UI builds are in api/static/vendor/ (`make web-assets`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

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

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def static_files() -> StaticFiles:
    return _RevalidatedStaticFiles(directory=STATIC_DIR)
