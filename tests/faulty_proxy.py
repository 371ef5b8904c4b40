"""A small HTTP reverse proxy for client tests: it stands between a real client and the real
stack, answers chosen requests itself (503, 429 with Retry-After) or alters what the API sent,
and records every request it saw and when."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# Headers that belong to one connection, not to the message (RFC 9110 7.6.1), and the length
# that the proxy sets itself.
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


@dataclass
class Seen:
    at: float  # time.monotonic()
    method: str
    path: str
    content_range: str | None
    status: int


# A fault: given (method, path, content_range, how many such requests came before), an answer
# (status, Retry-After or None) for the proxy to give itself, or None to forward the request.
Fault = Callable[[str, str, "str | None", int], "tuple[int, str | None] | None"]


class FaultyProxy:
    def __init__(
        self, target: str, fault: Fault | None = None, mutate: Callable[[str, str, bytes], bytes] | None = None
    ) -> None:
        self.target = target
        self.fault = fault or (lambda *_: None)
        self.mutate = mutate or (lambda method, path, body: body)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._upstream = httpx.Client(base_url=target, timeout=60)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        self._upstream.close()

    def of(self, method: str, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def gaps(self, method: str, path_prefix: str) -> list[float]:
        """Seconds between consecutive requests of `method` whose path starts with `path_prefix`."""
        times = [s.at for s in self.of(method, path_prefix)]
        return [later - earlier for earlier, later in itertools.pairwise(times)]

    def _record(self, method: str, path: str, content_range: str | None, status: int) -> None:
        with self._lock:
            self.seen.append(Seen(time.monotonic(), method, path, content_range, status))

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                method, path, content_range = self.command, self.path, self.headers.get("Content-Range")
                with proxy._lock:
                    before = sum(
                        1 for s in proxy.seen if (s.method, s.path, s.content_range) == (method, path, content_range)
                    )
                fault = proxy.fault(method, path, content_range, before)
                if fault is not None:
                    status, retry_after = fault
                    proxy._record(method, path, content_range, status)
                    code = "unavailable" if status == 503 else "too_many_requests"
                    headers = {"Content-Type": "application/json"}
                    if retry_after is not None:
                        headers["Retry-After"] = retry_after
                    self._answer(status, headers, json.dumps({"code": code, "detail": "from the test proxy"}).encode())
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                upstream = proxy._upstream.request(method, path, content=body, headers=headers)
                proxy._record(method, path, content_range, upstream.status_code)
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
                content = proxy.mutate(method, path, upstream.content)
                if method == "HEAD":
                    out["Content-Length"] = upstream.headers.get("content-length", "0")
                    self.send_response(upstream.status_code)
                    for name, value in out.items():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                self._answer(upstream.status_code, out, content)

            do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = do_PATCH = _handle

        return Handler


def refuse_first(rules: dict[str, tuple[int, int, str]]) -> Fault:
    """A fault that answers the first `count` requests matching `"METHOD /path-prefix"` with
    `status` and `Retry-After: retry_after`, and forwards everything else."""
    left = {prefix: count for prefix, (count, _, _) in rules.items()}
    lock = threading.Lock()

    def fault(method: str, path: str, content_range: str | None, before: int):
        request = f"{method} {path}"
        with lock:
            for prefix, (_, status, retry_after) in rules.items():
                if request.startswith(prefix) and left[prefix] > 0:
                    left[prefix] -= 1
                    return status, retry_after
        return None

    return fault
