"""uvicorn's httptools protocol with the two things it lacks at the framing layer.

- A cap on the request head (request line and headers): httptools buffers a header of any
  size, so one client could make the API hold hundreds of MiB. Heads over
  MAX_HEAD_BYTES are answered 431 and the connection closed, before more is buffered.
- Framing errors (bad Content-Length, chunked and Content-Length together, ...) are
  answered before the app runs; uvicorn sends them as text/plain, the contract wants
  the JSON error body everywhere.

Used as `uvicorn --http api.http_protocol:BoundedHttpToolsProtocol`.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024

_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = MAX_HEAD_BYTES

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            # Counts body bytes that share this read too; checked only if the head is still open.
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
            self.logger.warning("Request head over %d bytes refused.", self.max_head_bytes)
            self._send_error(431, "request_header_too_large",
                             f"the request line and headers must fit in {self.max_head_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

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
