"""FastAPI dependencies: the settings, the stores, the client's address and the current user."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param

from core.config import IPNetwork, Settings
from core.errors import Forbidden, NotAuthenticated
from core.tokens import decode_token
from core.users import RecentUsers, User, UserStore

# OAuth2 password flow in the schema, so Swagger UI's Authorize button logs in at /token.
_bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False, description="a token from POST /token")


def _trusted(address: str, proxies: tuple[IPNetwork, ...]) -> bool:
    try:
        parsed = ip_address(address)
    except ValueError:
        return False
    parsed = getattr(parsed, "ipv4_mapped", None) or parsed
    return any(parsed in network for network in proxies)


def client_address(peer: str, forwarded_for: Iterable[str], proxies: tuple[IPNetwork, ...]) -> str:
    """Who sent the request: the peer, unless it is a trusted proxy; then the right-most
    address of X-Forwarded-For that is not a trusted proxy (the left part is the client's to
    write, so it proves nothing). All trusted: the left-most."""
    if not _trusted(peer, proxies):
        return peer
    chain = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(chain):
        if not _trusted(hop, proxies):
            return hop
    return chain[0] if chain else peer


# Dependencies are `async def`: a plain `def` costs a thread-pool hop on every request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings  # app.state is untyped: api/main.py sets these
    return settings


async def get_user_store(request: Request) -> UserStore:
    users: UserStore = request.app.state.users
    return users


async def get_client_address(request: Request) -> str:
    peer = request.client.host if request.client else "unknown"
    proxies = request.app.state.settings.trusted_proxy_networks
    return client_address(peer, request.headers.getlist("x-forwarded-for"), proxies)


BearerToken = Annotated[str | None, Depends(_bearer)]


async def current_user(request: Request, token: BearerToken) -> User:
    return await user_for_token(request, token)


async def user_for_token(request: Request, token: str | None) -> User:
    """The user behind a valid bearer token: same name, same id (not a later user of that
    name), and a token version not revoked since."""
    if not token:
        raise NotAuthenticated("missing bearer token")
    settings: Settings = request.app.state.settings
    claims = decode_token(token.strip(), settings.jwt_key())
    recent_users: RecentUsers = request.app.state.recent_users
    user = await recent_users.matching(claims.sub, claims.uid, claims.ver)
    if user is None:
        raise NotAuthenticated("token no longer valid")
    return user


async def request_user(request: Request) -> User:
    """`current_user` without FastAPI's dependency solving, for the fast lane (api/fast_lane.py):
    the bearer token read as OAuth2PasswordBearer reads it."""
    authorization = request.headers.get("authorization")
    scheme, token = get_authorization_scheme_param(authorization)
    return await user_for_token(request, token if scheme.lower() == "bearer" else None)


async def current_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("this endpoint is for admins")
    return user


SettingsDep = Annotated[Settings, Depends(get_settings)]
UserStoreDep = Annotated[UserStore, Depends(get_user_store)]
ClientAddress = Annotated[str, Depends(get_client_address)]
CurrentUser = Annotated[User, Depends(current_user)]
CurrentAdmin = Annotated[User, Depends(current_admin)]
