"""Typed domain errors. Each carries the contract's `code`; HTTP statuses live in api/errors.py."""

from __future__ import annotations

from typing import Any


class TransferError(Exception):
    """Base of every error a client can cause. `extra` becomes extra JSON fields."""

    code = "error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


# --- input ----------------------------------------------------------------
class InvalidRequest(TransferError):
    code = "invalid_request"


class InvalidFileId(TransferError):
    code = "invalid_file_id"


class InvalidContentRange(TransferError):
    code = "invalid_content_range"


class InvalidChunkHeader(TransferError):
    code = "invalid_chunk_header"


class LengthMismatch(TransferError):
    code = "length_mismatch"


class ChecksumMismatch(TransferError):
    code = "checksum_mismatch"


class InvalidFileName(TransferError):
    code = "invalid_file_name"


class InvalidSha256(TransferError):
    code = "invalid_sha256"


class ChunkTooLarge(TransferError):
    code = "chunk_too_large"


class FileTooLarge(TransferError):
    code = "file_too_large"


# --- tus and the IETF resumable-upload draft (/files/) -----------------------
class UnsupportedTusVersion(TransferError):
    code = "unsupported_tus_version"


class UnsupportedMediaType(TransferError):
    code = "unsupported_media_type"


class InvalidTusHeader(TransferError):
    """A malformed Upload-Length, Upload-Offset, Upload-Metadata, Upload-Checksum, ..."""

    code = "invalid_tus_header"


class UnsupportedChecksumAlgorithm(TransferError):
    code = "unsupported_checksum_algorithm"


class TusChecksumMismatch(ChecksumMismatch):
    """Upload-Checksum did not match the PATCH body (tus answers 460, not 400)."""


class OffsetMismatch(TransferError):
    code = "offset_mismatch"


class UploadLengthExceeded(TransferError):
    code = "upload_length_exceeded"


class ConcatenationError(TransferError):
    """A final concatenation names parts that are not finished partial uploads of the caller."""

    code = "invalid_concatenation"


# --- state ----------------------------------------------------------------
class NotFound(TransferError):
    code = "not_found"


class Overlap(TransferError):
    code = "overlap"


class TotalMismatch(TransferError):
    code = "total_mismatch"


class AlreadyComplete(TransferError):
    code = "already_complete"


class UploadFailed(TransferError):
    code = "upload_failed"


class Assembling(TransferError):
    code = "assembling"


class NotComplete(TransferError):
    code = "not_complete"


class InsufficientStorage(TransferError):
    code = "insufficient_storage"


# --- fairness: what one user may hold or do -----------------------------------
class QuotaExceeded(TransferError):
    code = "quota_exceeded"


class RetryLater(TransferError):
    """Refused for now; `retry_after` (seconds) becomes the Retry-After header."""

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = retry_after


class TooManyUploads(RetryLater):
    code = "too_many_uploads"


class UploadRateLimited(RetryLater):
    code = "rate_limited"


class TooManyChunks(TransferError):
    code = "too_many_chunks"


# --- auth -----------------------------------------------------------------
class NotAuthenticated(TransferError):
    code = "not_authenticated"


class InvalidCredentials(TransferError):
    code = "invalid_credentials"


class Forbidden(TransferError):
    code = "forbidden"


class InvalidLink(TransferError):
    """A signed download link that is expired, tampered with, or not for this file."""

    code = "invalid_link"


class TooManyAttempts(TransferError):
    code = "too_many_attempts"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class BodyStalled(TransferError):
    """The request body stopped arriving (FT_BODY_IDLE_TIMEOUT): the chunk is dropped."""

    code = "body_timeout"


# --- infrastructure ---------------------------------------------------------
class Unavailable(TransferError):
    """A dependency (Redis) is down: the server's fault, not the client's."""

    code = "unavailable"


class UnreadableRecord(Unavailable):
    """An upload's record on disk cannot be read (written by a newer release, or damaged): the
    upload is unavailable until an operator looks; nothing removes it meanwhile."""
