"""Admin-only endpoints: POST /cleanup and GET /tasks/{task_id} (CONTRACT 7)."""

from __future__ import annotations

from typing import Annotated, Any

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentAdmin, SettingsDep
from api.errors import documented_errors
from core.errors import NotFound
from core.jobs import Jobs

router = APIRouter(tags=["admin"])

_ADMIN_ERRORS = documented_errors({403: "forbidden: for admins only"})


class CleanupReportModel(BaseModel):
    removed: list[str]
    freed_bytes: int


class TaskAcceptedModel(BaseModel):
    task_id: str


class TaskResultModel(BaseModel):
    task_id: str
    state: str
    result: Any = None
    error: str | None = None


def _cleanup_body(result: dict[str, Any]) -> dict[str, Any]:
    return {"removed": result.get("removed", []), "freed_bytes": result.get("freed_bytes", 0)}


@router.post(
    "/cleanup",
    summary="Admins: remove stale uploads now",
    description="""
Runs the cleanup that Celery beat runs every `FT_CLEANUP_INTERVAL` seconds, on a worker, now:
uploads not complete with no activity for `older_than` seconds (default `FT_STALE_AFTER`) are
removed, their received bytes, state and manifests. Complete files are never touched.

200 `{"removed": ["file ids"], "freed_bytes": N}`, or 202 `{"task_id": "..."}` when it runs
longer than `FT_CLEANUP_WAIT` seconds: read the result later at `GET /tasks/{task_id}`.
""",
    response_model=CleanupReportModel,
    responses={
        200: {"description": "the removed uploads and the bytes freed"},
        202: {"model": TaskAcceptedModel, "description": "still running after the wait; read it at /tasks/{task_id}"},
        **documented_errors(
            {
                400: "invalid_request: older_than is not 0..10^9 seconds",
                403: "forbidden: for admins only",
                502: "task_failed: the cleanup task raised",
            }
        ),
    },
)
async def run_cleanup(
    request: Request,
    admin: CurrentAdmin,
    settings: SettingsDep,
    older_than: Annotated[int | None, Query(ge=0, le=10**9, description="seconds; default FT_STALE_AFTER")] = None,
) -> JSONResponse:
    jobs: Jobs = request.app.state.jobs  # app.state is untyped: api/main.py sets it
    result = await run_in_threadpool(jobs.cleanup, older_than)
    if settings.cleanup_wait <= 0:  # no wait: always 202 (a get with timeout 0 still takes a result already in)
        return JSONResponse({"task_id": result.id}, status_code=202)
    try:
        report = await run_in_threadpool(result.get, timeout=settings.cleanup_wait, propagate=False)
    except CeleryTimeout:
        return JSONResponse({"task_id": result.id}, status_code=202)
    if not result.successful():
        return JSONResponse({"code": "task_failed", "detail": str(report)}, status_code=502)
    return JSONResponse(_cleanup_body(report))


@router.get(
    "/tasks/{task_id}",
    summary="Admins: the result of a cleanup that answered 202",
    description="`state` is `pending`, `started`, `success` (with `result`, as `POST /cleanup` answers it) "
    "or `failure` (with `error`). Ids this API never handed out → 404.",
    response_model=TaskResultModel,
    response_model_exclude_unset=True,
    responses=documented_errors({403: "forbidden: for admins only", 404: "not_found: no task with that id"}),
)
async def task_result(task_id: str, request: Request, admin: CurrentAdmin) -> dict[str, Any]:
    jobs: Jobs = request.app.state.jobs
    result = await run_in_threadpool(jobs.result, task_id)
    if result is None:
        raise NotFound("no such task")
    state = await run_in_threadpool(lambda: result.state)
    body: dict[str, Any] = {"task_id": task_id, "state": state.lower()}
    if state == "SUCCESS":
        body["result"] = result.result
    elif state == "FAILURE":
        body["error"] = str(result.result)
    return body
