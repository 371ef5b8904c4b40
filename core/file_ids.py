"""Validation of client-chosen file ids: the only way a file_id may reach a path."""

from __future__ import annotations

import re

from core.errors import InvalidFileId

FILE_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_FILE_ID = re.compile(FILE_ID_PATTERN)


def validate_file_id(file_id: str) -> str:
    if not _FILE_ID.fullmatch(file_id):
        raise InvalidFileId("file_id must be 1-128 characters of [A-Za-z0-9._-] and must not start with '.'")
    return file_id
