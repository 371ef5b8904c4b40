"""GET /health: no auth; Redis ping and the number of live workers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from api.errors import unavailable_response
from core.workers_registry import count_live

router = APIRouter(tags=["health"])


class HealthModel(BaseModel):
    redis: str
    workers: int


class UnhealthyModel(HealthModel):
    """A 503 is an error answer too (CONTRACT 2): `code` and `detail` besides the two counters."""

    model_config = ConfigDict(extra="allow")

    code: str
    detail: str


@router.get(
    "/health",
    summary="Is the service up?",
    description='No token needed. 200 `{"redis": "ok", "workers": N}` while Redis answers and at least one '
    "Celery worker is alive; otherwise 503 with `code: unavailable` and what is missing.",
    response_model=HealthModel,
    responses={503: {"model": UnhealthyModel, "description": "unavailable: Redis unreachable or no worker alive"}},
)
async def health(request: Request) -> JSONResponse:
    redis = request.app.state.redis
    retry_after = request.app.state.settings.unavailable_retry_after
    try:
        await redis.ping()
        workers = await count_live(redis)
    except Exception:  # any failure to reach Redis means unhealthy, never a 500
        return unavailable_response(retry_after, "Redis is unreachable", redis="unavailable", workers=0)
    if workers == 0:
        return unavailable_response(retry_after, "no worker is alive", redis="ok", workers=0)
    return JSONResponse({"redis": "ok", "workers": workers})
