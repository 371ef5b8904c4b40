"""Client of the File Transfer API, as a library (`from client import Client`) and a command
(`python -m client upload|download|status|login`)."""

from client.api import Client, DownloadResult, UploadResult
from client.errors import (
    ApiError,
    AuthError,
    ClientError,
    ConflictError,
    LocalFileChanged,
    NotCompleteError,
    NotFoundError,
    TransferFailed,
    UnavailableError,
    UsageError,
)

__all__ = [
    "ApiError", "AuthError", "Client", "ClientError", "ConflictError", "DownloadResult", "LocalFileChanged",
    "NotCompleteError", "NotFoundError", "TransferFailed", "UnavailableError", "UploadResult", "UsageError",
]
