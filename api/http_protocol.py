"""uvicorn's httptools protocol with what it lacks at the framing layer.

- An exact cap on the request head (request line and headers): httptools buffers a header of
  any size, so one client could make the API hold hundreds of MiB. Only head bytes count: the
  end of the head (the blank line) is looked for in what arrived before it is parsed, so a
  head over MAX_HEAD_BYTES is answered 431 whether it comes in one write or in pieces, and a
  body that shares a read with a small head is never counted.
- A header-read timeout: a connection whose request head is not complete FT_HEADER_TIMEOUT
  seconds after it opened (or after the head's first byte, on a kept-alive connection) is
  closed. Without it a client that sends a few bytes a second holds a connection (and a file
  descriptor) forever; uvicorn's own timer covers only the idle time between requests
  (FT_KEEPALIVE_TIMEOUT).
- Saturation answered, not failed: a request arriving while this process already handles
  FT_MAX_INFLIGHT requests, or on a connection beyond FT_MAX_CONNECTIONS, gets 503
  `overloaded` with Retry-After in the JSON error shape (uvicorn's limit_concurrency would send
  a bare text/plain 503). Connections over the limit are closed after that answer.
- Framing errors (bad Content-Length, chunked and Content-Length together, ...) are answered
  before the app runs; uvicorn sends them as text/plain, the contract wants the JSON body.

One process keeps its own counts: with FT_API_WORKERS=N the limits apply to each process.
Used through `python -m api` (api/__main__.py).
"""

from __future__ import annotations

import asyncio
import json
import resource
from functools import cache
from typing import Any

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.config import Settings

MAX_HEAD_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"  # httptools (llhttp) accepts only CRLF line ends
FD_RESERVE = 64  # descriptors kept for files, Redis and logs when FT_MAX_CONNECTIONS is near the fd limit

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@cache
def serving_settings() -> Settings:
    """This process's settings (uvicorn builds the protocol; each worker reads its environment)."""
    return Settings()


def connection_limit(configured: int) -> int:
    """FT_MAX_CONNECTIONS, lowered to fit under this process's open-file limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - FD_RESERVE))


def overloaded_app(retry_after: int, close: bool) -> ASGI3Application:
    """The ASGI app that answers a request this process has no room for."""
    body = json.dumps(
        {"code": "overloaded", "detail": "the server is handling as many requests as it can; retry later"}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"%d" % retry_after),
    ]
    if close:
        headers.append((b"connection", b"close"))

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = serving_settings()
        self.header_timeout = settings.header_timeout
        self.max_connections = connection_limit(settings.max_connections)
        self.max_inflight = settings.max_inflight
        self.limit_concurrency = None  # ours below, with a JSON answer
        self._serve = self.app
        self._busy = overloaded_app(settings.overload_retry_after, close=False)
        self._full = overloaded_app(settings.overload_retry_after, close=True)

    # --- head size and head timeout ------------------------------------------------------

    # asyncio.Transport, as uvicorn's own override says (asyncio.Protocol's takes BaseTransport).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._start_head()
        super().connection_made(transport)
        self._arm_head_timer()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""  # the head's last 3 bytes so far: its end may straddle two reads
        self._message_done = False

    def _head_part(self, data: bytes) -> int:
        """How many bytes of `data` belong to the current head (up to and including its end)."""
        tail = self._head_tail
        found = (tail + data[:3]).find(HEAD_END)
        if found != -1:
            return found + len(HEAD_END) - len(tail)
        found = data.find(HEAD_END)
        return len(data) if found == -1 else found + len(HEAD_END)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        if in_head:
            part = self._head_part(data)
            if self._head_bytes + part > self.max_head_bytes:
                self.logger.warning("Request head over %d bytes refused.", self.max_head_bytes)
                self._send_error(
                    431,
                    "request_header_too_large",
                    f"the request line and headers must fit in {self.max_head_bytes} bytes",
                )
                return
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm_head_timer()  # a kept-alive connection starts its next request
        self._message_done = False
        super().data_received(data)
        if in_head and self._in_head and not self._message_done:
            # Still in the same head: all of `data` was head (leading blank lines included).
            self._head_bytes += len(data)
            self._head_tail = (self._head_tail + data)[-3:]
        # A head that began after a message ended inside this read is counted from the next
        # read on: pipelined heads may pass the cap by less than one read.

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        over_connections = len(self.connections) > self.max_connections
        over_inflight = len(self.tasks) >= self.max_inflight
        if over_connections or over_inflight:
            self.logger.warning(
                "Overloaded (%d connections, %d requests): answering 503.", len(self.connections), len(self.tasks)
            )
        self.app = self._full if over_connections else self._busy if over_inflight else self._serve
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._start_head()
        self._message_done = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes:
            self._send_error(
                408, "request_timeout", f"the request head did not arrive within {self.header_timeout:g} seconds"
            )
        else:
            self.transport.close()  # nothing asked: a silent close, as for an idle keep-alive

    # --- JSON errors ----------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        self._send_error(400, "bad_request", msg)

    def _send_error(self, status: int, code: str, detail: str) -> None:
        body = json.dumps({"code": code, "detail": detail}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
