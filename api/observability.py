"""One ASGI middleware (pure ASGI: bodies stream through untouched) that gives every request a
request id, counts it for /metrics, writes its one log line and puts the strict browser headers
(api/security_headers.py) on every answer: one layer for all that every request needs, since
each layer costs every request and every message of its answer a call and a copy.

The request id is the client's `X-Request-ID` when it is sane (core/request_context.py), else a
new one; it is echoed in the answer's `X-Request-ID`, set for the request's code (log lines of
core/ carry it) and passed to the Celery tasks the request sends (core/jobs.py). Metrics are
labelled by route template (`/upload/{file_id}`), never by raw path: file ids would make a
series per file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from fastapi.routing import iter_route_contexts
from prometheus_client import Counter, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics
from core.request_context import new_request_id, request_id, sane_request_id

log = logging.getLogger("ft.request")

UNMATCHED = "unmatched"  # the route label of a path no route has (404s of scanners, typos)
LOGIN_FAILURES = {401: "invalid_credentials", 429: "too_many_attempts"}  # answers of POST /token


class _Exchange:
    """What one request sent and got."""

    __slots__ = ("created", "length", "received", "served", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.created: str | None = None  # the file id of a tus creation (its Location)
        self.received = 0
        self.served = 0
        self.length = 0  # Content-Length of the answer: what a pathsend sends


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return sane_request_id(value.decode("latin-1"))
    return None


def route_of(app: object, scope: Scope) -> tuple[str, dict[str, Any]]:
    """The route template and path parameters: from the router's own match when it left them in
    this scope, else matched again (a middleware inside may have passed a copy of the scope)."""
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in (context.route for context in iter_route_contexts(getattr(app, "routes", ()))):
            match, child = candidate.matches(scope)
            if match is Match.FULL:
                route, scope = candidate, {**scope, **child}
                break
            if match is Match.PARTIAL and partial is None:  # e.g. a tus PATCH sent as POST + override
                partial = candidate, child
        if route is None and partial is not None:
            route, scope = partial[0], {**scope, **partial[1]}
    path = getattr(route, "path", None) if route is not None else None
    return (path or UNMATCHED), scope.get("path_params") or {}


class RequestObserver:
    def __init__(self, app: ASGIApp, router: object = None, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.app = app
        self.router = router  # the FastAPI app, whose routes name the templates
        # Headers every answer gets, replacing any of the same names the app set.
        self.headers = list(headers)
        self._replaced = frozenset(name for name, _ in self.headers)
        self._children: dict[
            tuple[str, str, str], tuple[Counter, Histogram]
        ] = {}  # metric children by labels, made once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _client_request_id(scope) or new_request_id()
        token = request_id.set(rid)
        exchange = _Exchange()
        replaced = self._replaced
        started = time.perf_counter()

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                exchange.received += len(message.get("body", b""))
            return message

        async def observing_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                exchange.status = message["status"]
                headers = []
                length = location = None
                for name, value in message.get("headers", ()):
                    lower = name.lower()
                    if lower in replaced:
                        continue
                    if lower == b"content-length":
                        length = value
                    elif lower == b"location":
                        location = value
                    headers.append((name, value))
                exchange.length = int(length) if length is not None and length.isdigit() else 0
                if exchange.status == 201 and location is not None:
                    exchange.created = location.decode("latin-1").rstrip("/").rpartition("/")[2]
                headers += self.headers
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            elif kind == "http.response.body":
                exchange.served += len(message.get("body", b""))
            elif kind == "http.response.pathsend":
                exchange.served += exchange.length
            await send(message)

        try:
            await self.app(scope, counting_receive, observing_send)
        except BaseException:
            if exchange.status is None:
                exchange.status = 500  # what ServerErrorMiddleware answers next
            raise
        finally:
            self._record(scope, exchange, time.perf_counter() - started)
            request_id.reset(token)

    def _record(self, scope: Scope, exchange: _Exchange, seconds: float) -> None:
        route, params = route_of(self.router, scope)
        method = scope["method"]
        status = str(exchange.status) if exchange.status is not None else "none"
        children = self._children.get((method, route, status))
        if children is None:  # as many as the label sets prometheus-client keeps anyway
            children = (metrics.REQUESTS.labels(method, route, status), metrics.LATENCY.labels(method, route, status))
            self._children[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if exchange.received:
            metrics.RECEIVED_BYTES.labels(route).inc(exchange.received)
        if exchange.served:
            metrics.SERVED_BYTES.labels(route).inc(exchange.served)
        if route == "/token" and exchange.status in LOGIN_FAILURES:
            metrics.LOGIN_FAILURES.labels(LOGIN_FAILURES[exchange.status]).inc()
        client = scope.get("client")
        # The path as sent (percent-encoded, without the query: signed links carry secrets there).
        path = scope.get("raw_path", b"").decode("latin-1") or scope.get("path", "")
        log.info(
            "%s %s %s",
            method,
            path,
            status,
            extra={
                "ft": {
                    "method": method,
                    "route": route,
                    "status": exchange.status,
                    "file_id": params.get("file_id") or exchange.created,
                    "duration_ms": round(seconds * 1000, 1),
                    "bytes_in": exchange.received,
                    "bytes_out": exchange.served,
                    "client": client[0] if client else None,
                }
            },
        )
