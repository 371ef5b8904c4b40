"""A TCP proxy between a client and the API, for tests and benchmarks of bad links.

It counts the bytes each way, can throttle them, and can cut every connection after a number
of bytes: the link of a device that drops every few MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from urllib.parse import urlsplit

KiB = 1024


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the API. Counts bytes each way; can throttle both ways to
    `rate` bytes/s (per direction, shared by all connections) and cut every connection after
    `cut_after` bytes have passed through it (both ways together), or after `cut_up_after`
    bytes from the client to the server."""

    def __init__(
        self, target_url: str, rate: float | None = None, cut_after: int | None = None, cut_up_after: int | None = None
    ) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        self.rate = rate
        self.cut_after = cut_after
        self.cut_up_after = cut_up_after
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.cuts = 0
        self.connections = 0
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._next_slot = {"up": 0.0, "down": 0.0}
        self._writers: set = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *exc) -> None:
        """Stop, aborting every open connection (as a dead proxy would leave them)."""
        if self._loop is not None:

            def shutdown() -> None:
                for writer in list(self._writers):
                    writer.transport.abort()
                self._loop.call_soon(self._loop.stop)  # after the aborts have closed the sockets

            self._loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _throttle(self, direction: str, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        slot = max(now, self._next_slot[direction]) + n / self.rate
        self._next_slot[direction] = slot
        await asyncio.sleep(max(0.0, slot - now))

    async def _handle(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        state = {"passed": 0, "up": 0, "down": 0, "cut": False}
        self._writers.update((client_writer, server_writer))

        def cut() -> None:
            if not state["cut"]:
                state["cut"] = True
                self.cuts += 1
            client_writer.transport.abort()
            server_writer.transport.abort()

        def limit(direction: str) -> tuple[int | None, str]:
            """(bytes after which to cut, the counter they are compared with)."""
            if self.cut_up_after is not None:
                return (self.cut_up_after, "up") if direction == "up" else (None, direction)
            return self.cut_after, "passed"

        async def pump(reader, writer, direction: str) -> None:
            cut_at, counter = limit(direction)
            try:
                while True:
                    data = await reader.read(16 * KiB)
                    if not data:
                        break
                    if cut_at is not None and state[counter] + len(data) >= cut_at:
                        room = max(0, cut_at - state[counter])
                        if room:
                            writer.write(data[:room])
                            setattr(self, direction, getattr(self, direction) + room)
                        cut()
                        return
                    await self._throttle(direction, len(data))
                    writer.write(data)
                    await writer.drain()
                    state["passed"] += len(data)
                    state[direction] += len(data)
                    setattr(self, direction, getattr(self, direction) + len(data))
            except (ConnectionError, OSError):
                pass

        tasks = [
            asyncio.ensure_future(pump(client_reader, server_writer, "up")),
            asyncio.ensure_future(pump(server_reader, client_writer, "down")),
        ]
        with contextlib.suppress(asyncio.CancelledError):  # the proxy is shutting down
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.transport.abort() if state["cut"] else writer.close()
