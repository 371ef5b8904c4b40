"""The one place where domain errors become HTTP answers: `{"code", "detail", ...extra}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from limits.errors import StorageError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors

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
    errors.NotFound: 404,
    errors.Overlap: 409,
    errors.TotalMismatch: 409,
    errors.AlreadyComplete: 409,
    errors.UploadFailed: 409,
    errors.NotComplete: 409,
    errors.Assembling: 409,
    errors.ChunkTooLarge: 413,
    errors.FileTooLarge: 413,
    errors.TooManyAttempts: 429,
    errors.InsufficientStorage: 507,
    errors.Unavailable: 503,
}

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


def error_response(status: int, code: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"code": code, "detail": detail, **extra}, status_code=status, headers=headers)


def to_response(exc: errors.TransferError) -> JSONResponse:
    status = STATUS_BY_ERROR.get(type(exc), 400)
    headers = {}
    if isinstance(exc, errors.NotAuthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.TooManyAttempts):
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(status, exc.code, exc.detail, headers=headers or None, **exc.extra)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.TransferError)
    async def _domain(request: Request, exc: errors.TransferError) -> JSONResponse:
        return to_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", ""))} for err in exc.errors()
        ]
        return error_response(400, "invalid_request", "request validation failed", errors=problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "unavailable", "the state store (Redis) is unavailable; retry later")

    for exc_type in (RedisConnectionError, RedisTimeoutError, StorageError):
        app.add_exception_handler(exc_type, _unavailable)
