"""JWT access tokens (HS256). Only HS256 is accepted on decode: no `none`, no RS/HS confusion.

Claims: `sub` (the user name), `role`, `iat`, `exp` (the contract's); `uid`, the user's stable
id, so that a token never works for a later user of the same name; and `ver`, the user's token
version at issue time, so that a password reset revokes older tokens exactly.

A device sends the same token with every chunk: `decode_token` remembers what it decoded
(HMAC check, JSON, claim checks) until the token's `exp`, keyed by the raw token and the key.
Only the decoding is remembered; who the token's user is now is still checked on every
request (api/deps.py), so revocation works as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from core.errors import NotAuthenticated
from core.users import ROLES, User

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "uid", "role", "iat", "exp", "ver"]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    sub: str
    uid: str
    role: str
    iat: int
    exp: int
    ver: int


def issue_token(user: User, secret: str, ttl: int, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": user.name,
        "uid": user.id,
        "role": user.role,
        "iat": issued,
        "exp": issued + ttl,
        "ver": user.token_version,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


_MAX_REMEMBERED = 10_000
_decoded: dict[tuple[str, str], TokenClaims] = {}


def decode_token(token: str, secret: str) -> TokenClaims:
    """The token's claims if it is valid now; NotAuthenticated otherwise."""
    claims = _decoded.get((token, secret))
    if claims is not None:
        if claims.exp > time.time():  # as PyJWT: expired once exp <= now
            return claims
        del _decoded[(token, secret)]
    claims = _decode(token, secret)
    if len(_decoded) >= _MAX_REMEMBERED:
        _decoded.clear()
    _decoded[(token, secret)] = claims
    return claims


def _decode(token: str, secret: str) -> TokenClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            # `iat` is checked below with a minute's allowance for clocks of several API hosts.
            options={"require": _REQUIRED_CLAIMS, "verify_iat": False},
        )
    except jwt.PyJWTError as exc:
        raise NotAuthenticated(f"invalid token: {exc}") from None
    if not all(isinstance(claims[name], str) for name in ("sub", "uid")) or claims["role"] not in ROLES:
        raise NotAuthenticated("invalid token: bad sub, uid or role claim")
    if not isinstance(claims["iat"], int) or claims["iat"] > time.time() + 60:
        raise NotAuthenticated("invalid token: issued in the future")
    if not isinstance(claims["ver"], int):
        raise NotAuthenticated("invalid token: bad ver claim")
    return TokenClaims(claims["sub"], claims["uid"], claims["role"], claims["iat"], claims["exp"], claims["ver"])
