"""`/files/`: tus 1.0.0 and the IETF draft "Resumable Uploads for HTTP" (CONTRACT 9).

Only the protocol lives here: which headers a request has, which it gets back, and the
status codes. The domain (creation, append, checksum, concatenation) is core/tus.py.

Two protocols on one endpoint, told apart per request:
- tus 1.0.0: `Tus-Resumable: 1.0.0` on every request but OPTIONS (else 412).
- the IETF draft, as tus-js-client 4 speaks it: `Upload-Draft-Interop-Version` (5 for
  draft-03, 6 for draft-05; 3 and 4 of earlier drafts are accepted too), completion said by
  `Upload-Complete: ?1` (or the older `Upload-Incomplete: ?0`), no Tus-Resumable. The draft's
  informational 104 answer is not sent: uvicorn cannot send 1xx answers, and clients do not
  need it (they take the Location of the final answer).

Every answer, errors included, carries `Tus-Resumable: 1.0.0` (TusMiddleware); errors keep
the JSON body (api/errors.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.message import Message
from email.utils import formatdate
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from api.deps import CurrentUser
from api.errors import documented_errors
from api.routers.uploads import FileId
from core.config import Settings
from core.errors import InvalidTusHeader, UnsupportedMediaType, UnsupportedTusVersion
from core.file_ids import validate_file_id
from core.tus import (
    CHECKSUM_ALGORITHMS,
    EXTENSIONS,
    TUS_VERSION,
    Append,
    NewUpload,
    TusService,
    TusUpload,
    parse_checksum,
    parse_metadata,
    parse_size,
)
from core.users import User

TUS_CONTENT_TYPE = "application/offset+octet-stream"
DRAFT_CONTENT_TYPE = "application/partial-upload"  # draft-05 (interop version 6)
DRAFT_VERSIONS = {"3", "4", "5", "6"}
TUS_HEADERS = (
    "Upload-Offset",
    "Location",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Upload-Complete",
    "Upload-Draft-Interop-Version",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
)


router = APIRouter(tags=["tus"])


async def get_tus_service(request: Request) -> TusService:
    tus: TusService = request.app.state.tus  # app.state is untyped: api/main.py sets it
    return tus


TusServiceDep = Annotated[TusService, Depends(get_tus_service)]


# --- reading the request ---------------------------------------------------------------
class Protocol:
    """Which protocol one request speaks, and what that changes."""

    def __init__(self, request: Request) -> None:
        headers = request.headers
        draft = headers.get("upload-draft-interop-version")
        # The IETF draft's interop version (spaces trimmed), or None for a tus 1.0.0 request.
        self.draft = draft.strip() if draft is not None else None
        if draft is not None:
            if draft.strip() not in DRAFT_VERSIONS:
                raise UnsupportedTusVersion(
                    f"Upload-Draft-Interop-Version {draft!r} is not one of {', '.join(sorted(DRAFT_VERSIONS))}"
                )
        elif request.method != "OPTIONS" and headers.get("tus-resumable", "").strip() != TUS_VERSION:
            raise UnsupportedTusVersion(f"this server speaks tus {TUS_VERSION}: send Tus-Resumable: {TUS_VERSION}")

    @property
    def is_draft(self) -> bool:
        return self.draft is not None

    def complete(self, request: Request) -> bool:
        """The draft's completion flag: this request's body ends the upload."""
        complete = _boolean(request.headers.get("upload-complete"), "Upload-Complete")
        incomplete = _boolean(request.headers.get("upload-incomplete"), "Upload-Incomplete")
        if complete is not None:
            return complete
        return incomplete is False

    def check_content_type(self, request: Request, appending: bool) -> None:
        """tus bodies are application/offset+octet-stream; the draft's appends are
        application/partial-upload from interop version 6 (draft-04/05) on, untyped before; the
        draft's creation request may carry the file's own type."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not self.is_draft:
            if content_type != TUS_CONTENT_TYPE:
                raise UnsupportedMediaType(f"a tus body must be Content-Type: {TUS_CONTENT_TYPE}")
        elif appending and self.draft == "6" and content_type != DRAFT_CONTENT_TYPE:
            raise UnsupportedMediaType(f"an append of this draft version must be Content-Type: {DRAFT_CONTENT_TYPE}")


def _boolean(raw: str | None, header: str) -> bool | None:
    """A structured-field boolean: ?1 or ?0."""
    if raw is None:
        return None
    value = raw.strip()
    if value not in ("?1", "?0"):
        raise InvalidTusHeader(f"{header} must be ?1 or ?0")
    return value == "?1"


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _disposition_name(request: Request) -> str | None:
    """`filename` (or RFC 2231 `filename*`) of a Content-Disposition header."""
    raw = request.headers.get("content-disposition")
    if not raw:
        return None
    message = Message()
    message["content-disposition"] = raw
    name = message.get_filename()
    return name if isinstance(name, str) else None


def _content_length(request: Request) -> int | None:
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return None
    return parse_size(request.headers.get("content-length"), "Content-Length")


def _append_request(request: Request, protocol: Protocol, offset: int) -> Append:
    headers = request.headers
    return Append(
        offset=offset,
        content_length=_content_length(request),
        checksum=parse_checksum(headers.get("upload-checksum")),
        upload_length=parse_size(headers.get("upload-length"), "Upload-Length"),
        complete=protocol.is_draft and protocol.complete(request),
    )


def _body(request: Request) -> AsyncIterator[bytes]:
    return request.stream()


# --- writing the answer ------------------------------------------------------------------
def _upload_headers(upload: TusUpload, protocol: Protocol) -> dict[str, str]:
    headers = {"Upload-Offset": str(upload.offset)}
    if upload.length is not None:
        headers["Upload-Length"] = str(upload.length)
    else:
        headers["Upload-Defer-Length"] = "1"
    if upload.expires_at is not None:
        headers["Upload-Expires"] = formatdate(upload.expires_at, usegmt=True)
    if upload.concat:
        headers["Upload-Concat"] = upload.concat
    if protocol.draft is not None:
        headers["Upload-Complete"] = "?1" if upload.complete else "?0"
        headers["Upload-Draft-Interop-Version"] = protocol.draft
    return headers


def _location(request: Request, file_id: str) -> str:
    return str(request.base_url).rstrip("/") + f"/files/{file_id}"


def _capabilities(settings: Settings) -> dict[str, str]:
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(settings.max_file_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


_ERRORS = documented_errors(
    {
        400: "invalid_tus_header, unsupported_checksum_algorithm, invalid_concatenation",
        404: "not_found: no such upload, or another user's",
        409: "offset_mismatch, already_complete, upload_failed, assembling",
        412: "unsupported_tus_version (with Tus-Version)",
        413: "file_too_large, upload_length_exceeded",
        415: "unsupported_media_type: a tus PATCH needs application/offset+octet-stream",
        460: "checksum_mismatch: the body does not match Upload-Checksum; nothing of it was kept",
        507: "insufficient_storage",
    }
)


def _header(name: str, description: str, required: bool = True, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_TUS_RESUMABLE = _header(
    "Tus-Resumable",
    "tus requests: 1.0.0 (else 412). IETF draft requests send Upload-Draft-Interop-Version (5 or 6) instead",
    enum=[TUS_VERSION],
)
_OFFSET = _header(
    "Upload-Offset", "where this body starts: the upload's current offset (else 409)", pattern="^[0-9]{1,15}$"
)
_CHECKSUM = _header(
    "Upload-Checksum",
    "`algorithm base64digest` of this body (sha1, md5, crc32, sha256, sha512);"
    " a mismatch answers 460 and keeps nothing",
    required=False,
)


def _documented(*parameters: dict[str, Any]) -> dict[str, Any]:
    """The tus headers of an operation. Bodies (application/offset+octet-stream) are said in
    the descriptions: OpenAPI tools cannot send that media type."""
    return {"parameters": list(parameters)}


# --- routes --------------------------------------------------------------------------------
@router.options("/files", status_code=204, response_class=Response, responses=_ERRORS)
@router.options("/files/", status_code=204, response_class=Response, include_in_schema=False)
@router.options("/files/{file_id}", status_code=204, response_class=Response, include_in_schema=False)
async def capabilities(request: Request, user: CurrentUser) -> Response:
    """tus discovery: the protocol version (`Tus-Version`), the extensions (`Tus-Extension`), the
    largest upload accepted (`Tus-Max-Size`) and the checksum algorithms (`Tus-Checksum-Algorithm`)."""
    return Response(status_code=204, headers=_capabilities(request.app.state.settings))


@router.post(
    "/files",
    status_code=201,
    response_class=Response,
    responses=_ERRORS,
    openapi_extra=_documented(
        _TUS_RESUMABLE,
        _header(
            "Upload-Length",
            "the file's size in bytes (or Upload-Defer-Length: 1)",
            required=False,
            pattern="^[0-9]{1,13}$",
        ),
        _header("Upload-Defer-Length", "1: the size is sent later, with a PATCH", required=False, enum=["1"]),
        _header(
            "Upload-Metadata", "`key base64value` pairs, comma-separated; `filename` names the file", required=False
        ),
        _header("Upload-Concat", "`partial`, or `final;URL URL ...` to join finished partial uploads", required=False),
    ),
)
@router.post("/files/", status_code=201, response_class=Response, include_in_schema=False)
async def create_upload(request: Request, user: CurrentUser, tus: TusServiceDep) -> Response:
    """Create an upload (tus creation, creation-defer-length, creation-with-upload and
    concatenation; the draft's upload creation). Answers 201 with its URL in Location.
    A body (application/offset+octet-stream) is the upload's first bytes."""
    protocol = Protocol(request)
    headers = request.headers
    length = parse_size(headers.get("upload-length"), "Upload-Length")
    defer = headers.get("upload-defer-length")
    concat = headers.get("upload-concat")
    if concat is not None and concat != "partial" and not concat.startswith("final;"):
        raise InvalidTusHeader("Upload-Concat must be `partial` or `final;URL URL ...`")
    if protocol.is_draft:
        if length is None and protocol.complete(request):
            length = _content_length(request)  # the whole upload in this one request
    elif concat in (None, "partial") and (
        (length is None) == (defer is None) or (defer is not None and defer.strip() != "1")
    ):
        raise InvalidTusHeader("send either Upload-Length or Upload-Defer-Length: 1")
    with_body = _has_body(request)
    if with_body:
        protocol.check_content_type(request, appending=False)
    metadata = parse_metadata(headers.get("upload-metadata"))
    if protocol.is_draft and "filename" not in metadata and (name := _disposition_name(request)):
        metadata["filename"] = name.encode()  # the draft names a file with Content-Disposition
    new = NewUpload(length=length, metadata=metadata, concat=concat)
    upload = await tus.create(user, new)
    if with_body or (protocol.is_draft and protocol.complete(request)):
        upload = await tus.append(user, upload.file_id, _append_request(request, protocol, 0), _body(request))
    return Response(
        status_code=201, headers={"Location": _location(request, upload.file_id), **_upload_headers(upload, protocol)}
    )


@router.head("/files/{file_id}", response_class=Response, responses=_ERRORS, openapi_extra=_documented(_TUS_RESUMABLE))
async def upload_offset(file_id: FileId, request: Request, user: CurrentUser, tus: TusServiceDep) -> Response:
    """The upload's offset (`Upload-Offset`), with its length, metadata and expiry: where a client
    resumes after an interruption. The IETF draft's offset retrieval answers here too (204)."""
    validate_file_id(file_id)
    protocol = Protocol(request)
    upload = await tus.info(user, file_id)
    headers = _upload_headers(upload, protocol)
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    # Drafts -01 and -02 require 204 for offset retrieval (later ones allow it); tus says 200.
    return Response(status_code=204 if protocol.is_draft else 200, headers=headers)


@router.patch(
    "/files/{file_id}",
    status_code=204,
    response_class=Response,
    responses=_ERRORS,
    openapi_extra=_documented(_TUS_RESUMABLE, _OFFSET, _CHECKSUM),
)
async def append_to_upload(file_id: FileId, request: Request, user: CurrentUser) -> Response:
    """Append the body (application/offset+octet-stream) at Upload-Offset. A body cut off
    keeps every byte that arrived."""
    return await answer_append(request, user, file_id)


async def answer_append(request: Request, user: User, file_id: str) -> Response:
    """The operation itself, also served by the fast lane (api/fast_lane.py)."""
    tus: TusService = request.app.state.tus
    validate_file_id(file_id)
    protocol = Protocol(request)
    offset = parse_size(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise InvalidTusHeader("Upload-Offset is required")
    protocol.check_content_type(request, appending=True)
    upload = await tus.append(user, file_id, _append_request(request, protocol, offset), _body(request))
    return Response(status_code=204, headers=_upload_headers(upload, protocol))


@router.delete(
    "/files/{file_id}",
    status_code=204,
    response_class=Response,
    responses=_ERRORS,
    openapi_extra=_documented(_TUS_RESUMABLE),
)
async def terminate_upload(file_id: FileId, request: Request, user: CurrentUser, tus: TusServiceDep) -> Response:
    """tus termination, the draft's cancellation: the upload and its bytes are gone (then 404)."""
    validate_file_id(file_id)
    Protocol(request)
    await tus.terminate(user, file_id)
    return Response(status_code=204)


class TusMiddleware:
    """What every request and answer under /files shares, outside the routes so that errors
    answered by the app's handlers (401 from the auth dependency, 405, 503) are covered too:
    - `X-HTTP-Method-Override` on a POST to /files/... routes it as that method (for clients
      behind proxies that pass only GET and POST);
    - every answer carries `Tus-Resumable: 1.0.0`, and the answers of tus's own methods
      `Cache-Control: no-store` (an offset must never come from a cache)."""

    OVERRIDES = frozenset({"PATCH", "DELETE", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/files" or path.startswith("/files/")):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and path.startswith("/files/"):
            for name, value in scope["headers"]:
                if name == b"x-http-method-override":
                    method = value.decode("latin-1").strip().upper()
                    if method in self.OVERRIDES:
                        scope = {**scope, "method": method}
                    break
        extra = [(b"tus-resumable", TUS_VERSION.encode())]
        if scope["method"] != "GET":
            extra.append((b"cache-control", b"no-store"))

        async def send_with_tus_headers(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_tus_headers)
