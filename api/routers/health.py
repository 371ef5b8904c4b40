"""GET /health: no auth; Redis ping and the number of live workers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core.workers_registry import count_live

router = APIRouter(tags=["health"])


@router.get("/health", responses={503: {"description": "Redis unreachable or no worker alive"}})
async def health(request: Request) -> JSONResponse:
    redis = request.app.state.redis
    try:
        await redis.ping()
        workers = await count_live(redis)
    except Exception:  # any failure to reach Redis means unhealthy, never a 500
        return JSONResponse({"redis": "unavailable", "workers": 0}, status_code=503)
    status = 200 if workers > 0 else 503
    return JSONResponse({"redis": "ok", "workers": workers}, status_code=status)
