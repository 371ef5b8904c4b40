"""Short-lived signed download links: a plain browser download without an Authorization header.

A link is `/download/{file_id}?expires=E&sig=S`. S is an HMAC-SHA256, under a key derived
from the JWT secret (never the secret itself), of the file id, its owner, its SHA-256 and E.
So a link works for one file only, stops at E (at most FT_LINK_TTL seconds after it was
minted), and stops when the file is replaced (another SHA-256) or changes hands. Only the
owner (or an admin) mints one; whoever holds it may download until it expires, ranges
included, so a browser's own resume works. Bearer tokens never go into a URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from urllib.parse import quote

from core.errors import InvalidLink
from core.file_ids import validate_file_id
from core.records import UploadState
from core.state import Upload
from core.uploads import CompletedFile, UploadService
from core.users import User

_KEY_LABEL = b"ft download link v1"
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{43}")
_EXPIRES = re.compile(r"[0-9]{1,12}")
# A link may outlive its TTL by this much: several API hosts' clocks are not exactly equal.
CLOCK_SKEW = 5


@dataclass(frozen=True, slots=True)
class SignedLink:
    url: str
    expires_at: int


def link_key(jwt_secret: str) -> bytes:
    return hmac.new(jwt_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _signature(key: bytes, upload: Upload, expires: int) -> str:
    message = "\n".join([upload.file_id, upload.owner, upload.sha256 or "", str(expires)]).encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class DownloadLinks:
    def __init__(self, uploads: UploadService, jwt_secret: str, ttl: int) -> None:
        self.uploads = uploads
        self.key = link_key(jwt_secret)
        self.ttl = ttl

    async def mint(self, user: User, file_id: str, now: float | None = None) -> SignedLink:
        """A link to a complete file that `user` may download (404 / 409 otherwise)."""
        upload = await self.uploads.load_for(user, file_id)
        self.uploads.as_completed(upload)
        expires = int(now if now is not None else time.time()) + self.ttl
        query = f"expires={expires}&sig={_signature(self.key, upload, expires)}"
        return SignedLink(f"/download/{quote(file_id)}?{query}", expires)

    async def resolve(self, file_id: str, expires: str, signature: str, now: float | None = None) -> CompletedFile:
        """The file a link grants, or InvalidLink: expired, tampered, for another file, or for
        a file that was replaced or removed since."""
        validate_file_id(file_id)
        now = now if now is not None else time.time()
        if not _EXPIRES.fullmatch(expires or "") or not _SIGNATURE.fullmatch(signature or ""):
            raise InvalidLink("this download link is malformed; ask for a new one")
        when = int(expires)
        if when < now:
            raise InvalidLink("this download link has expired; ask for a new one")
        if when > now + self.ttl + CLOCK_SKEW:
            raise InvalidLink("this download link is not valid")
        upload = await self.uploads.load(file_id)
        if (
            upload is None
            or upload.state != UploadState.COMPLETE
            or not hmac.compare_digest(_signature(self.key, upload, when), signature)
        ):
            raise InvalidLink("this download link is not valid for this file")
        return self.uploads.as_completed(upload)
