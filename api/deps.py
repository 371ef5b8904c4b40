"""FastAPI dependencies: the settings, the stores, and the current user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from core.config import Settings
from core.errors import Forbidden, NotAuthenticated
from core.tokens import decode_token
from core.users import User, UserStore

# OAuth2 password flow in the schema, so Swagger UI's Authorize button logs in at /token.
_bearer = OAuth2PasswordBearer(tokenUrl="token", auto_error=False, description="a token from POST /token")


# Dependencies are `async def`: a plain `def` costs a thread-pool hop on every request.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_user_store(request: Request) -> UserStore:
    return request.app.state.users


BearerToken = Annotated[str | None, Depends(_bearer)]


async def current_user(request: Request, token: BearerToken) -> User:
    return await user_for_token(request, token)


async def user_for_token(request: Request, token: str | None) -> User:
    """The user behind a valid bearer token who still exists and whose token is not revoked."""
    if not token:
        raise NotAuthenticated("missing bearer token")
    settings: Settings = request.app.state.settings
    claims = decode_token(token.strip(), settings.jwt_key())
    user = request.app.state.users.get(claims.sub)
    if user is None or claims.ver != user.token_version:
        raise NotAuthenticated("token no longer valid")
    return user


async def current_admin(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise Forbidden("this endpoint is for admins")
    return user


SettingsDep = Annotated[Settings, Depends(get_settings)]
UserStoreDep = Annotated[UserStore, Depends(get_user_store)]
CurrentUser = Annotated[User, Depends(current_user)]
CurrentAdmin = Annotated[User, Depends(current_admin)]
