"""Admin-only endpoints: POST /cleanup and GET /tasks/{task_id} (CONTRACT 7)."""

from __future__ import annotations

from typing import Annotated

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentAdmin, SettingsDep

router = APIRouter(tags=["admin"])

_ADMIN_ERRORS = {401: {"description": "not_authenticated"}, 403: {"description": "forbidden"}}


def _cleanup_body(result: dict) -> dict:
    return {"removed": result.get("removed", []), "freed_bytes": result.get("freed_bytes", 0)}


@router.post(
    "/cleanup",
    responses={
        200: {"description": '{"removed": [file_ids], "freed_bytes": N}'},
        202: {"description": '{"task_id": ...}: still running after the wait; read it at /tasks/{task_id}'},
        **_ADMIN_ERRORS,
    },
)
async def run_cleanup(
    request: Request,
    admin: CurrentAdmin,
    settings: SettingsDep,
    older_than: Annotated[int | None, Query(ge=0, le=10**9, description="seconds; default FT_STALE_AFTER")] = None,
) -> JSONResponse:
    jobs = request.app.state.jobs
    result = await run_in_threadpool(jobs.cleanup, older_than)
    try:
        report = await run_in_threadpool(result.get, timeout=settings.cleanup_wait, propagate=False)
    except CeleryTimeout:
        return JSONResponse({"task_id": result.id}, status_code=202)
    if not result.successful():
        return JSONResponse({"code": "task_failed", "detail": str(report)}, status_code=502)
    return JSONResponse(_cleanup_body(report))


@router.get("/tasks/{task_id}", responses=_ADMIN_ERRORS)
async def task_result(task_id: str, request: Request, admin: CurrentAdmin) -> dict:
    result = request.app.state.jobs.result(task_id)
    state = await run_in_threadpool(lambda: result.state)
    body: dict = {"task_id": task_id, "state": state.lower()}
    if state == "SUCCESS":
        body["result"] = result.result
    elif state == "FAILURE":
        body["error"] = str(result.result)
    return body
