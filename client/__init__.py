"""Client of the File Transfer API, as a library (`from client import Client`) and a command
(`python -m client upload|download|status|delete|login`)."""

from client import errors
from client.api import Client, DownloadResult, UploadResult
from client.errors import *  # noqa: F403 - every error class is part of the library's interface

__all__ = ["Client", "DownloadResult", "UploadResult", *errors.__all__]  # noqa: PLE0604 - a list of names
