"""The download response: Range and conditionals as nginx answers them (core/byte_ranges.py).

The bytes come from a `FileSource` (core/storage): read through the store in a worker thread,
or handed to the server by path (`http.response.pathsend`) when the store has local paths."""

from __future__ import annotations

import os
from secrets import token_hex
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.errors import error_response
from core.byte_ranges import (
    DEFAULT_MAX_RANGES,
    content_disposition,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    limit_ranges,
    parse_range,
    strong_etag,
)
from core.storage import ByteReader, FileSource, local_file

MiB = 1024 * 1024
OCTET_STREAM = "application/octet-stream"

# What to send: bytes as they are, (start, end inclusive) as file content.
Plan = list[bytes | tuple[int, int]]


def _validator_headers(etag: str, last_modified: float) -> dict[str, str]:
    return {"ETag": etag, "Last-Modified": http_date(last_modified)}


def _precondition_response(status: int, etag: str, last_modified: float) -> Response:
    if status == 304:
        return Response(status_code=304, headers=_validator_headers(etag, last_modified))
    return error_response(
        412,
        "precondition_failed",
        "a precondition (If-Match, If-Unmodified-Since or If-None-Match) does not hold for the current file",
    )


class RangeFileResponse(Response):
    """200, 206 (one range), 206 multipart/byteranges, 304, 412 or 416 for a final file.

    `etag` is the file's SHA-256 hex digest, `last_modified` an epoch time (e.g. completion); the
    request's method and headers come from the ASGI scope. `source` is a FileSource (or a local
    path). The file is read through it in a worker thread, `read_size` bytes at a time: 1 MiB
    reads run ~4.5x faster than Starlette's 64 KiB and keep up with nginx's sendfile over
    loopback (bench/download_probe.py). A whole file with a local path goes by pathsend when
    the server offers it.

    Overlapping and adjacent ranges are merged; more than `max_ranges` after that and the
    whole file is sent (core/byte_ranges.limit_ranges).

    With `accel_uri` (an nginx `internal` location, e.g. /_ft_files/<file_id>/data), the answers
    that need no bytes (304, 412, 416) are still given here, the rest is left to nginx, except
    a Range that merging or the cap changed: nginx would serve it as asked."""

    media_type = OCTET_STREAM

    def __init__(
        self,
        source: FileSource | str | os.PathLike[str],
        size: int,
        etag: str,
        last_modified: float,
        filename: str,
        *,
        read_size: int = MiB,
        accel_uri: str | None = None,
        max_ranges: int = DEFAULT_MAX_RANGES,
    ) -> None:
        self.source = source if isinstance(source, FileSource) else local_file(source)
        self.max_ranges = max_ranges
        self.accel_uri = accel_uri
        self.size = size
        self.etag = strong_etag(etag)
        self.last_modified = last_modified
        self.read_size = read_size
        self.status_code = 200
        self.background = None
        self.init_headers(
            {
                "Accept-Ranges": "bytes",
                **_validator_headers(self.etag, last_modified),
                "Content-Disposition": content_disposition(filename),
            }
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        request = Headers(scope=scope)
        status = evaluate_preconditions(method, request, self.etag, self.last_modified)
        if status is not None:
            return await _precondition_response(status, self.etag, self.last_modified)(scope, receive, send)
        asked = None
        if if_range_allows(request.get("if-range"), self.etag, self.last_modified):
            asked = parse_range(request.get("range"), self.size)
        ranges = limit_ranges(asked, self.max_ranges)
        if ranges == []:
            response = error_response(
                416,
                "range_not_satisfiable",
                f"no satisfiable range in the Range header for a file of {self.size} bytes",
                headers={"Content-Range": f"bytes */{self.size}"},
            )
            return await response(scope, receive, send)
        if (
            self.accel_uri is not None
            and ranges == asked
            and "if-match" not in request
            and "if-unmodified-since" not in request
        ):
            return await self._accel_redirect(scope, receive, send)

        headers = self.headers.mutablecopy()
        plan: Plan
        if ranges is None:
            status, plan = 200, [(0, self.size - 1)] if self.size else []
        elif len(ranges) == 1:
            status, plan = 206, [ranges[0]]
            headers["Content-Range"] = f"bytes {ranges[0][0]}-{ranges[0][1]}/{self.size}"
        else:
            boundary = token_hex(16)
            status, plan = 206, self._multipart(ranges, boundary)
            headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
        headers["Content-Length"] = str(sum(len(p) if isinstance(p, bytes) else p[1] - p[0] + 1 for p in plan))
        await send({"type": "http.response.start", "status": status, "headers": headers.raw})

        if method == "HEAD" or not plan:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif (
            status == 200
            and self.source.local_path is not None
            and "http.response.pathsend" in scope.get("extensions", {})
        ):
            await send({"type": "http.response.pathsend", "path": os.fspath(self.source.local_path)})
        else:
            await self._stream(plan, receive, send)

    async def _accel_redirect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the bytes to nginx; it redoes Range and If-Range with the ETag and Last-Modified
        passed on here (deploy/nginx.conf) and answers exactly as above. Not done for If-Match or
        If-Unmodified-Since: nginx would check those again against its own validators.
        nginx adds Accept-Ranges to its 200s (but not to its 206s) and would repeat ours."""
        headers = self.headers.mutablecopy()
        del headers["Accept-Ranges"]
        headers["X-Accel-Redirect"] = quote(self.accel_uri or "")
        headers["Content-Length"] = "0"
        await send({"type": "http.response.start", "status": 200, "headers": headers.raw})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _multipart(self, ranges: list[tuple[int, int]], boundary: str) -> Plan:
        """nginx's framing: CRLF before every boundary, a CRLF after the closing one."""
        plan: Plan = []
        for start, end in ranges:
            plan.append(
                f"\r\n--{boundary}\r\nContent-Type: {OCTET_STREAM}\r\n"
                f"Content-Range: bytes {start}-{end}/{self.size}\r\n\r\n".encode()
            )
            plan.append((start, end))
        plan.append(f"\r\n--{boundary}--\r\n".encode())
        return plan

    async def _stream(self, plan: Plan, receive: Receive, send: Send) -> None:
        """Send `plan`, stopping when the client goes away: uvicorn (ASGI 2.3) silently drops
        what is sent after a disconnect, so only `receive` tells."""

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            task_group.cancel_scope.cancel()

        error = None
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(watch_disconnect)
            try:
                await self._send_plan(plan, send)
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                error = exc
            task_group.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _send_plan(self, plan: Plan, send: Send) -> None:
        reader: ByteReader = await anyio.to_thread.run_sync(self.source.open)
        try:
            for item in plan:
                if isinstance(item, bytes):
                    await send({"type": "http.response.body", "body": item, "more_body": True})
                    continue
                start, end = item
                while start <= end:
                    data = await anyio.to_thread.run_sync(reader.read, start, min(self.read_size, end + 1 - start))
                    if not data:
                        raise RuntimeError(f"the file is shorter than the {self.size} bytes announced")
                    start += len(data)
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            reader.close()
