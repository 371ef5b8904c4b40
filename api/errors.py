"""The one place where domain errors become HTTP answers: `{"code", "detail", ...extra}`."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import compile_path

from core import errors
from core.redis_clients import RedisBusy

STATUS_BY_ERROR: dict[type[errors.TransferError], int] = {
    errors.InvalidRequest: 400,
    errors.InvalidFileId: 400,
    errors.InvalidContentRange: 400,
    errors.InvalidChunkHeader: 400,
    errors.LengthMismatch: 400,
    errors.ChecksumMismatch: 400,
    errors.InvalidFileName: 400,
    errors.InvalidSha256: 400,
    errors.NotAuthenticated: 401,
    errors.InvalidCredentials: 401,
    errors.Forbidden: 403,
    errors.InvalidLink: 403,
    errors.NotFound: 404,
    errors.Overlap: 409,
    errors.TotalMismatch: 409,
    errors.AlreadyComplete: 409,
    errors.UploadFailed: 409,
    errors.NotComplete: 409,
    errors.Assembling: 409,
    errors.BodyStalled: 408,
    errors.ChunkTooLarge: 413,
    errors.FileTooLarge: 413,
    errors.TooManyAttempts: 429,
    errors.QuotaExceeded: 413,
    errors.TooManyUploads: 429,
    errors.UploadRateLimited: 429,
    errors.TooManyChunks: 409,
    errors.InsufficientStorage: 507,
    errors.UnsupportedTusVersion: 412,
    errors.UnsupportedMediaType: 415,
    errors.InvalidTusHeader: 400,
    errors.UnsupportedChecksumAlgorithm: 400,
    errors.TusChecksumMismatch: 460,
    errors.OffsetMismatch: 409,
    errors.UploadLengthExceeded: 413,
    errors.ConcatenationError: 400,
    errors.Unavailable: 503,
    errors.UnreadableRecord: 503,
}

# Error replies of a Redis that refuses writes: plain ("NOREPLICAS ..."), or from inside a Lua
# script (Redis 7: the same; Redis 6.2: "Error running script (...): -NOREPLICAS ...").
_REDIS_REFUSING_WRITES = re.compile(r"(?:^|-)(?:MISCONF|OOM|READONLY|NOREPLICAS)\b")

# Starlette's own HTTP errors (unknown route, wrong method, ...) get a code too.
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer (CONTRACT 2); some codes add fields (e.g. `next_expected_byte`)."""

    model_config = ConfigDict(extra="allow")

    code: str
    detail: str


_STRING = {"schema": {"type": "string"}}
# Headers that always come with an error status (so the schema may call them required).
_ERROR_HEADERS = {
    416: {"Content-Range": {**_STRING, "required": True, "description": "bytes */SIZE"}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "seconds"}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "seconds"}},
}
_NOT_AUTHENTICATED = {
    "description": "not_authenticated: missing, malformed, expired or revoked token",
    "headers": {"WWW-Authenticate": {**_STRING, "required": True, "description": "Bearer"}},
}


def documented_errors(
    codes: dict[int, str], *, authenticated: bool = True, redis: bool = True
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error answers of one operation: each a JSON ErrorBody, with
    the headers that come with it. Any other 4xx (e.g. 405) has the same body: "4XX" says so,
    and keeps FastAPI from documenting a 422 that this API never sends (validation errors are
    400 `invalid_request`). The schema is inlined rather than given as `model`, which FastAPI
    would document under the route's media type (octet-stream for downloads)."""
    error_json = {"application/json": {"schema": ErrorBody.model_json_schema()}}
    responses: dict[int | str, dict[str, Any]] = {
        "4XX": {"description": "any other client error", "content": error_json}
    }
    if authenticated:
        responses[401] = {**_NOT_AUTHENTICATED, "content": error_json}
    if redis:
        codes = {503: "unavailable: the state store (Redis) is down", **codes}
    for status, description in sorted(codes.items()):
        responses[status] = {"description": description, "content": error_json}
        if status in _ERROR_HEADERS:
            responses[status]["headers"] = _ERROR_HEADERS[status]
    return responses


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail, **extra}, status_code=status, headers=headers)


def unavailable_response(
    retry_after: int, detail: str = "the state store (Redis) is unavailable; retry later", **extra: Any
) -> JSONResponse:
    """503 `unavailable` (Redis down), with when to try again."""
    return error_response(503, "unavailable", detail, headers={"Retry-After": str(retry_after)}, **extra)


def to_response(exc: errors.TransferError) -> JSONResponse:
    status = STATUS_BY_ERROR.get(type(exc), 400)
    headers = {}
    if isinstance(exc, errors.NotAuthenticated | errors.InvalidCredentials):
        headers["WWW-Authenticate"] = "Bearer"  # RFC 9110: every 401 names the scheme it wants
    if (retry_after := getattr(exc, "retry_after", None)) is not None:
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, errors.BodyStalled):
        headers["Connection"] = "close"  # the rest of a stalled body is not worth waiting for
    if isinstance(exc, errors.UnsupportedTusVersion):
        headers["Tus-Version"] = "1.0.0"
    return error_response(status, exc.code, exc.detail, headers=headers or None, **exc.extra)


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route whose path matches (FastAPI wraps included routers, so they
    are walked as FastAPI's own OpenAPI generation walks them)."""
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        path_format = route.path_format or route.path
        if path_format and route.methods and compile_path(path_format)[0].match(path):
            methods |= route.methods
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.TransferError)
    async def _domain(request: Request, exc: errors.TransferError) -> JSONResponse:
        response = to_response(exc)
        if response.status_code == 503:
            response.headers.setdefault("Retry-After", str(request.app.state.settings.unavailable_retry_after))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"loc": list(err.get("loc", ())), "msg": str(err.get("msg", ""))} for err in exc.errors()]
        return error_response(400, "invalid_request", "request validation failed", errors=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the methods of the first route with this path; GET and HEAD
            # of /download, or POST and DELETE of /upload, are routes of their own.
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client closed the connection mid-body: its chunk was already given back
        # (core/uploads.py). Nobody is left to read this answer, but without a handler every
        # dropped upload would log an "Exception in ASGI application" traceback.
        return error_response(400, "client_disconnected", "the connection closed before the whole body arrived")

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        return unavailable_response(request.app.state.settings.unavailable_retry_after)

    for exc_type in (RedisConnectionError, RedisTimeoutError):
        app.add_exception_handler(exc_type, _unavailable)

    @app.exception_handler(RedisBusy)
    async def _busy(request: Request, exc: RedisBusy) -> JSONResponse:
        return error_response(
            503,
            "overloaded",
            "the server is handling as many requests as it can; retry later",
            headers={"Retry-After": str(request.app.state.settings.overload_retry_after)},
        )

    @app.exception_handler(RedisResponseError)
    async def _redis_refused(request: Request, exc: RedisResponseError) -> JSONResponse:
        # A Redis that refuses writes (its own disk full, out of memory, a read-only replica)
        # is as unavailable as one that is down. Any other error reply is our bug: re-raised, it
        # reaches the catch-all below (500) and Starlette logs its traceback.
        if _REDIS_REFUSING_WRITES.search(str(exc)):
            return error_response(
                503,
                "unavailable",
                "the state store (Redis) refuses writes; retry later",
                headers={"Retry-After": str(request.app.state.settings.unavailable_retry_after)},
            )
        raise exc

    @app.exception_handler(Exception)
    async def _broken(request: Request, exc: Exception) -> JSONResponse:
        # A bug or a broken disk, never the client's input: still the contract's JSON shape.
        # Starlette logs the traceback after this answer.
        return error_response(500, "internal_error", "the server failed to handle this request")
