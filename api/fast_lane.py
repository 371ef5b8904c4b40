"""The two operations every uploaded byte takes, served without FastAPI's routing and
dependency solving: `POST /upload/{file_id}` (a chunk) and tus `PATCH /files/{file_id}`.

A device sends one of these per 64 KiB; everything else is rare. Routing walks the route
table, the dependency solver builds a Request and resolves the user, and three more layers
(ExceptionMiddleware, AsyncExitStackMiddleware, the route's own wrapper) wrap every message:
together a fifth of the API's CPU per chunk (bench/chunk_cpu.py: 2.9 -> 2.3 ms). Here a
request of a lane goes straight to the operation's own function, the one its FastAPI route
calls too (`answer_chunk`, `answer_append`): one implementation, two ways in. The routes stay
declared in their routers, so the OpenAPI document, 405s and Allow headers are unchanged.

What the lane keeps exactly as the routes had it:
- matching: the method, and a path of the template's prefix and one segment (Starlette's
  `{file_id}`: `[^/]+`); anything else goes on to FastAPI;
- the user: the bearer token read as OAuth2PasswordBearer reads it (api/deps.py `request_user`);
- errors: answered by the app's own exception handlers (api/errors.py), found as Starlette's
  ExceptionMiddleware finds them (by the exception's class hierarchy); one without a handler
  goes up to ServerErrorMiddleware, the 500 of every other route;
- what the layers outside see: the middlewares it sits inside (the request observer, CORS,
  TusMiddleware) wrap it as they wrap the router, and it leaves the matched route and the path
  parameters in the scope, as the router does, for the observer's labels and log line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi.routing import APIRoute, iter_route_contexts
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.deps import request_user
from core.users import User

Operation = Callable[[Request, User, str], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Lane:
    """One operation: `method` on `prefix` + one path segment (its `file_id`)."""

    method: str
    prefix: str
    operation: Operation

    @property
    def template(self) -> str:
        return self.prefix + "{file_id}"


class FastLane:
    def __init__(self, app: ASGIApp, lanes: Sequence[Lane]) -> None:
        self.app = app
        self._lanes = {lane.method: lane for lane in lanes}
        self._routes: dict[str, APIRoute] = {}  # the declared route of each lane, found once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lanes.get(scope["method"]) if scope["type"] == "http" else None
        if lane is not None:
            path = get_route_path(scope)
            if path.startswith(lane.prefix):
                file_id = path[len(lane.prefix) :]
                if file_id and "/" not in file_id:
                    await self._serve(lane, file_id, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(self, lane: Lane, file_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self._route(lane, scope["app"])
        scope["path_params"] = {"file_id": file_id}
        request = Request(scope, receive)
        try:  # an operation answers by returning its Response: nothing is sent before it returns
            response = await lane.operation(request, await request_user(request), file_id)
        except Exception as exc:
            handler = _handler_for(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _route(self, lane: Lane, app: object) -> APIRoute:
        route = self._routes.get(lane.method)
        if route is None:
            for context in iter_route_contexts(getattr(app, "routes", ())):
                candidate = context.route
                if (
                    isinstance(candidate, APIRoute)
                    and candidate.path == lane.template
                    and lane.method in (candidate.methods or ())
                ):
                    route = self._routes[lane.method] = candidate
                    break
            else:
                raise LookupError(f"no route {lane.method} {lane.template} declared for the fast lane")
        return route


def _handler_for(
    handlers: dict[object, Callable[..., Awaitable[Response]]], exc: Exception
) -> Callable[..., Awaitable[Response]] | None:
    """The app's handler for `exc`, as ExceptionMiddleware picks it; the catch-all (Exception,
    500) is ServerErrorMiddleware's, outside."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
