"""The API's event loop: uvloop, with listening sockets that take every waiting connection.

libuv (under uvloop) accepts one connection per turn of the event loop ("don't accept()
connections in a loop", libuv 1.45), and leaves the rest to the next poll. A turn is short on
an idle server; on one serving a thousand devices it is tens of milliseconds, so when a fleet
connects at once the kernel's accept queue drains at a few dozen connections a second. Measured
with `python -m bench.devices --devices 1000`: 450 connections queued, drained over 14 s, and
their first requests waited up to 15 s (request p99 8.7-13 s), while the devices already
accepted went on uploading. The stdlib loop accepts up to `backlog` connections per wake; so
does this one (at most ACCEPT_BATCH, so that one wake stays short), and leaves the rest of
uvloop as it is: request p99 2-4 s in the same benchmark.

uvicorn uses it through `loop="api.listener:new_event_loop"` (api/__main__.py), and calls
`create_server` with host and port (one process) or with the socket its supervisor bound
(FT_API_WORKERS > 1). TLS servers and options this module does not know go to uvloop's own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import uvloop

logger = logging.getLogger("ft.listener")

ACCEPT_BATCH = 128  # connections taken per wake of a listening socket
ACCEPT_RETRY_DELAY = 1.0  # seconds without accepting after running out of descriptors (as asyncio)
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class DrainingServer(asyncio.AbstractServer):
    """Listening sockets served by `loop.add_reader`: each wake accepts until the queue is empty."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket], protocol_factory: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._sockets = sockets
        self._protocol_factory = protocol_factory
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._serving = False
        self._closed = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._closed.is_set():
            return
        self._serving = True
        for sock in self._sockets:
            self._watch(sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._closed.wait()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _watch(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept_waiting, sock)

    def _accept_waiting(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: next one
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # The queue stays with the kernel; try again once something has been closed.
                logger.error("cannot accept a connection (%s); retrying in %g s", exc, ACCEPT_RETRY_DELAY)
                self._loop.remove_reader(sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_DELAY, self._watch, sock)
                return
            self._hand_over(conn)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvloop's own accept does
        task = self._loop.create_task(self._connect(conn))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, conn)
        except OSError as exc:  # the peer reset it before the transport was made
            logger.debug("accepted connection lost before it was served: %s", exc)
            conn.close()


class Loop(uvloop.Loop):
    """uvloop.Loop whose plain TCP servers are DrainingServers."""

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], Any],
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        start_serving: bool = True,
        **options: Any,
    ) -> asyncio.AbstractServer:
        if ssl is not None or options:
            options.update(sock=sock, backlog=backlog, ssl=ssl, start_serving=start_serving)
            return await super().create_server(protocol_factory, host, port, **options)  # type: ignore[arg-type]
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sockets = [sock]
        else:
            sockets = await self._bind(host, port)
        for listening in sockets:
            listening.setblocking(False)
            listening.listen(backlog)
        server = DrainingServer(self, sockets, protocol_factory)
        if start_serving:
            await server.start_serving()
        return server

    async def _bind(self, host: str | Sequence[str] | None, port: int | None) -> list[socket.socket]:
        """One listening socket per address `host` resolves to, as asyncio binds them."""
        hosts: list[str | None] = [host] if host is None or isinstance(host, str) else list(host)
        infos: set[tuple[Any, ...]] = set()
        for name in hosts:
            found = await self.getaddrinfo(
                name or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            infos.update(found)
        sockets: list[socket.socket] = []
        try:
            for family, kind, proto, _name, address in sorted(infos, key=str):
                listening = socket.socket(family, kind, proto)
                sockets.append(listening)
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    listening.bind(address)
                except OSError as exc:
                    detail = f"error while attempting to bind on address {address!r}: {exc.strerror}"
                    raise OSError(exc.errno, detail) from None
        except BaseException:
            for listening in sockets:
                listening.close()
            raise
        if not sockets:
            raise OSError(f"no address to listen on for {host!r}")
        return sockets


def new_event_loop() -> asyncio.AbstractEventLoop:
    return Loop()
