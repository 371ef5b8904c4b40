"""Errors the client raises. Each carries a clear message and the CLI's exit status."""

from __future__ import annotations

from typing import Any

# Exit statuses of `python -m client` (documented in the README's Client section).
EXIT_OK = 0
EXIT_FAILED = 1  # the server failed the upload, a checksum did not match, anything else
EXIT_USAGE = 2  # bad arguments or input (argparse uses 2 as well)
EXIT_NOT_COMPLETE = 3  # `status`/`download` of a file that is not complete yet
EXIT_AUTH = 4  # invalid credentials, not authenticated, forbidden, too many attempts
EXIT_NOT_FOUND = 5  # no such file id (or it belongs to someone else)
EXIT_CONFLICT = 6  # the local file changed, or the id holds a different file
EXIT_UNAVAILABLE = 7  # server unreachable or broken, out of storage, retries exhausted
EXIT_INTERRUPTED = 130

__all__ = [
    "ApiError",
    "AuthError",
    "ClientError",
    "ConflictError",
    "LocalFileChanged",
    "NotCompleteError",
    "NotFoundError",
    "TransferFailed",
    "UnavailableError",
    "UsageError",
]


class ClientError(Exception):
    exit_code = EXIT_FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(ClientError):
    exit_code = EXIT_USAGE


class AuthError(ClientError):
    exit_code = EXIT_AUTH


class NotFoundError(ClientError):
    exit_code = EXIT_NOT_FOUND


class NotCompleteError(ClientError):
    exit_code = EXIT_NOT_COMPLETE


class ConflictError(ClientError):
    exit_code = EXIT_CONFLICT


class LocalFileChanged(ConflictError):
    pass


class UnavailableError(ClientError):
    exit_code = EXIT_UNAVAILABLE


class TransferFailed(ClientError):
    """The server failed the upload, or the bytes do not hash to what they should."""


class ApiError(ClientError):
    """An error answer of the API: `{"code", "detail", ...}` with its HTTP status."""

    def __init__(
        self, status: int, code: str, detail: str, body: dict[str, Any] | None = None, retry_after: float | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.body = body or {}
        self.retry_after = retry_after
        super().__init__(describe(status, code, detail, self.body, retry_after))
        self.exit_code = exit_code_for(status, code)


_MESSAGES = {
    "invalid_credentials": "invalid credentials",
    "not_authenticated": "not authenticated",
    "forbidden": "forbidden",
    "not_found": "not found",
    "too_many_attempts": "too many failed logins",
    "insufficient_storage": "the server is out of storage",
    "file_too_large": "file too large",
    "chunk_too_large": "chunk too large",
    "invalid_file_id": "invalid file id",
    "not_complete": "not complete",
    "overlap": "overlapping chunk",
    "total_mismatch": "size mismatch",
    "already_complete": "already complete",
    "upload_failed": "upload failed",
    "unavailable": "server unavailable",
    "checksum_mismatch": "chunk checksum mismatch",
    "length_mismatch": "chunk length mismatch",
    "invalid_chunk_header": "invalid chunk header",
    "invalid_content_range": "invalid Content-Range",
    "invalid_file_name": "invalid file name",
    "invalid_sha256": "invalid SHA-256",
}


def describe(status: int, code: str, detail: str, body: dict[str, Any], retry_after: float | None) -> str:
    head = _MESSAGES.get(code, code.replace("_", " ") if code else f"HTTP {status}")
    text = f"{head} (HTTP {status}): {detail}" if detail else f"{head} (HTTP {status})"
    if code == "too_many_attempts" and retry_after is not None:
        text += f"; retry after {int(retry_after)} s"
    elif code == "insufficient_storage":
        text += "; run the same command again later to resume"
    elif code == "file_too_large" and "max_file_bytes" in body:
        text += f" (the server accepts at most {body['max_file_bytes']} bytes)"
    elif code == "upload_failed" and body.get("error"):
        text += f" ({body['error']})"
    return text


def exit_code_for(status: int, code: str) -> int:
    if code in ("invalid_credentials", "not_authenticated", "forbidden", "too_many_attempts") or status in (
        401,
        403,
        429,
    ):
        return EXIT_AUTH
    if code == "not_found" or status == 404:
        return EXIT_NOT_FOUND
    if code == "not_complete":
        return EXIT_NOT_COMPLETE
    if code in ("total_mismatch",):
        return EXIT_CONFLICT
    if code in ("insufficient_storage", "unavailable") or status >= 500:
        return EXIT_UNAVAILABLE
    if code in ("invalid_file_id", "file_too_large", "invalid_file_name"):
        return EXIT_USAGE
    return EXIT_FAILED
