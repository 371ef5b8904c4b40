"""GET /files (the list), POST /files/{file_id}/link (signed links), GET /files/{file_id}.

The tus endpoint (POST /files/, HEAD/PATCH/DELETE /files/{file_id}) shares these paths and
lives in a router of its own. GET /files/{file_id} answers exactly as GET /download does
(tusd's convention): it is the same handler, registered on a second path. HEAD stays tus's.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import CurrentUser, UserStoreDep
from api.errors import documented_errors
from api.routers import downloads
from api.routers.downloads import LinksDep
from api.routers.uploads import FileId, UploadServiceDep
from core import files_list
from core.errors import Forbidden, NotFound
from core.records import VisibleState
from core.uploads import iso
from core.users import User, UserStore

router = APIRouter(tags=["files"])


class FileItemModel(BaseModel):
    file_id: str
    file_name: str | None
    state: VisibleState
    total_bytes: int
    received_bytes: int
    created_at: str | None
    updated_at: str | None
    sha256: str | None
    owner: str | None = None


class FilesPageModel(BaseModel):
    items: list[FileItemModel]
    next: str | None


class SignedLinkModel(BaseModel):
    url: str
    expires_at: str
    expires_in: int


_LIST_DESCRIPTION = f"""
Your uploads and files, **newest first**, a page at a time: `items` and `next`, a cursor for
the following page (`null` on the last page). Pass it back as `?cursor=` with the same other
parameters. Files created while you page never make another file repeat or go missing.

Each item: `file_id`, `file_name`, `state` (`uploading`, `assembling`, `complete`, `failed`),
`total_bytes`, `received_bytes`, `created_at`, `updated_at` (ISO 8601 UTC) and `sha256`
(when complete).

Admins may list another user's files with `?owner=NAME`, or everybody's with `?all=true`;
items then carry `owner`, the user's name (`null` for a user since removed).

Example: `curl -H "Authorization: Bearer $TOKEN" 'localhost:8000/files?limit=2'` →
`{{"items": [{{"file_id": "big.iso-3f2a", "file_name": "big.iso", "state": "complete", ...}}, ...],
"next": "MTc2NDMx..."}}`

`limit` is 1-{files_list.MAX_LIMIT} (default {files_list.DEFAULT_LIMIT}); a bad `limit` or
`cursor` → 400 `invalid_request`.
"""


def _owner_names(users: UserStore) -> dict[str, str]:
    return {user.owner_id: user.name for user in users.list()}


async def _whose(user: User, users: UserStore, owner: str | None, everybody: bool) -> str | None:
    """The owner id to list (None: everybody's), after checking the caller may see it. The
    user store (SQLite) is read in a thread: never on the event loop."""
    if owner is None and not everybody:
        return user.owner_id
    if not user.is_admin:
        raise Forbidden("only admins may list other users' files (owner=, all=)")
    if everybody or owner is None:  # owner is None here only when everybody
        return None
    listed = await anyio.to_thread.run_sync(users.get, owner)
    if listed is None:
        raise NotFound(f"no user named {owner!r}")
    return listed.owner_id


@router.get(
    "/files",
    summary="List your uploads and files",
    description=_LIST_DESCRIPTION,
    response_model=FilesPageModel,
    response_model_exclude_unset=True,  # `owner` only in admins' views
    responses=documented_errors(
        {
            400: "invalid_request: limit is not 1-1000, or the cursor is not one this server handed out",
            403: "forbidden: owner= or all= from a user who is not an admin",
            404: "not_found: owner= names no user",
        }
    ),
)
async def list_files(
    user: CurrentUser,
    users: UserStoreDep,
    uploads: UploadServiceDep,
    limit: Annotated[
        int, Query(ge=1, le=files_list.MAX_LIMIT, description="items per page")
    ] = files_list.DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, Query(max_length=512, pattern="^[A-Za-z0-9_-]+$", description="`next` of the previous page")
    ] = None,
    owner: Annotated[str | None, Query(max_length=128, description="admins: this user's files")] = None,
    all: Annotated[bool, Query(description="admins: everybody's files")] = False,
) -> dict[str, Any]:
    owner_id = await _whose(user, users, owner, all)
    page = await files_list.list_files(uploads.repo, uploads.storage, owner_id, limit, cursor, uploads.enqueue_assembly)
    items = [files_list.item_fields(upload) for upload in page.items]
    if owner is not None or all:
        names = await anyio.to_thread.run_sync(_owner_names, users)
        for item, upload in zip(items, page.items, strict=True):
            item["owner"] = names.get(upload.owner)
    return {"items": items, "next": page.next_cursor}


# The collection with a trailing slash (tus clients' endpoint) lists too; documented once.
router.add_api_route(
    "/files/",
    list_files,
    methods=["GET"],
    response_model=FilesPageModel,
    response_model_exclude_unset=True,
    include_in_schema=False,
)


@router.post(
    "/files/{file_id}/link",
    summary="Get a short-lived download link",
    description="""
A link to a **complete** file that works without an `Authorization` header, for at most
`FT_LINK_TTL` seconds (default 300): what a browser's plain download (or `curl`, `wget -c`
with no token) needs. Ranges and resuming work as on `GET /download/{file_id}`.

The link is bound to this file and its content: once the file is deleted or replaced, or the
link expired, it answers 403 `invalid_link`. Bearer tokens never go into URLs; this does.

Example: `curl -X POST -H "Authorization: Bearer $TOKEN" localhost:8000/files/big.iso-3f2a/link` →
`{"url": "/download/big.iso-3f2a?expires=1764318512&sig=Qm9...", "expires_at": "2026-11-28T08:28:32.000Z",
"expires_in": 300}`, then `curl -O -J "localhost:8000$URL"`.
""",
    response_model=SignedLinkModel,
    responses=documented_errors(
        {
            400: "invalid_file_id",
            404: "not_found: no such file, or another user's",
            409: "not_complete: only complete files can be downloaded",
        }
    ),
)
async def create_link(file_id: FileId, user: CurrentUser, links: LinksDep) -> dict[str, Any]:
    link = await links.mint(user, file_id)
    return {"url": link.url, "expires_at": iso(link.expires_at), "expires_in": links.ttl}


# add_api_route's keyword arguments (each of its own type), as downloads.py gives them to its route.
_DOWNLOAD_ROUTE: dict[str, Any] = downloads.DOWNLOAD_ROUTE
router.add_api_route(
    "/files/{file_id}",
    downloads.download,
    methods=["GET"],
    summary="Download a file (as GET /download/{file_id})",
    description="The same answer as `GET /download/{file_id}`, on the tus upload's own URL (as tusd does).\n"
    + downloads.DOWNLOAD_DESCRIPTION,
    **_DOWNLOAD_ROUTE,
)
