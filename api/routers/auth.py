"""POST /token: JSON or an OAuth2 password-flow form (so Swagger's Authorize works)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field, ValidationError

from api.deps import ClientAddress, SettingsDep, UserStoreDep
from api.errors import documented_errors
from core.errors import InvalidRequest
from core.tokens import issue_token

router = APIRouter(tags=["auth"])


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(min_length=1, max_length=4096)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


async def _read_credentials(request: Request) -> Credentials:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.form()
            return Credentials(username=form.get("username", ""), password=form.get("password", ""))
        return Credentials.model_validate_json(await request.body())
    except (ValidationError, ValueError, UnicodeDecodeError, AssertionError):
        raise InvalidRequest('send JSON {"username": ..., "password": ...} or an OAuth2 password form') from None


@router.post(
    "/token",
    summary="Sign in: get a bearer token",
    description="""
Trades a user name and password for a bearer token to send as `Authorization: Bearer <token>`
on every other request. JSON `{"username": "...", "password": "..."}` or an OAuth2 password
form (what the **Authorize** button sends). The token expires after `expires_in` seconds
(`FT_TOKEN_TTL`); a password reset or the user's removal ends it sooner.

Example: `curl -s localhost:8000/token -H 'content-type: application/json' -d '{"username": "alice", "password": "..."}'`
→ `{"access_token": "eyJhbGciOi...", "token_type": "bearer", "expires_in": 3600}`

Wrong credentials → 401 `invalid_credentials` (the same for an unknown user); too many failed
attempts for a user or from an address → 429 `too_many_attempts` with `Retry-After`.
""",  # noqa: E501 - the curl example is one command line, as a reader copies it
    response_model=TokenResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": Credentials.model_json_schema()},
                "application/x-www-form-urlencoded": {"schema": Credentials.model_json_schema()},
            },
        }
    },
    responses=documented_errors(
        {
            400: "invalid_request: neither JSON credentials nor an OAuth2 password form",
            401: "invalid_credentials",
            429: "too_many_attempts: too many failed logins for this user from this address, or from "
            "this address in all; or too many logins being checked at once (see Retry-After)",
        },
        authenticated=False,
    ),
)
async def login(request: Request, settings: SettingsDep, users: UserStoreDep, address: ClientAddress) -> TokenResponse:
    creds = await _read_credentials(request)
    user = await request.app.state.login_throttle.login(creds.username, creds.password, address, users.authenticate)
    request.app.state.recent_users.remember(user)
    token = issue_token(user, settings.jwt_key(), settings.token_ttl)
    return TokenResponse(access_token=token, expires_in=settings.token_ttl)
