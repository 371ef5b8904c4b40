"""api/listener.py: the API's loop takes every queued connection in a few turns, not one per
turn as libuv does, stops accepting when closed, and waits out a lack of file descriptors.

Real sockets on loopback and a real uvloop loop; connections are queued by the kernel while the
loop is not running (a client's connect completes in the kernel, before any accept)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

import pytest
import uvloop

from api import listener

QUEUED = 300


class Recorder(asyncio.Protocol):
    made: list[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


def recorder_factory() -> tuple[Callable[[], Recorder], list[asyncio.BaseTransport]]:
    made: list[asyncio.BaseTransport] = []

    def factory() -> Recorder:
        protocol = Recorder()
        protocol.made = made
        return protocol

    return factory, made


def turns_until(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], deadline: float = 20.0) -> int:
    """Turns of `loop` until `done()`, each one `sleep(0)` (a poll for I/O and the ready callbacks)."""

    async def count() -> int:
        turns = 0
        ends = loop.time() + deadline
        while not done():
            if loop.time() > ends:
                raise TimeoutError(f"not done after {turns} turns")
            turns += 1
            await asyncio.sleep(0)
        return turns

    return loop.run_until_complete(count())


def serve_queued(
    new_loop: Callable[[], asyncio.AbstractEventLoop], count: int, sock: socket.socket | None = None, **server_options
) -> int:
    """Turns a server of `new_loop()` (on `sock`, or on a free port) needs to take `count`
    connections that wait in the kernel's queue; the server is closed and waited for after."""
    loop = new_loop()
    factory, made = recorder_factory()
    clients: list[socket.socket] = []
    try:
        if sock is None:
            server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0, **server_options))
        else:
            server = loop.run_until_complete(loop.create_server(factory, sock=sock, **server_options))
            assert server.sockets == (sock,)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        turns = turns_until(loop, lambda: len(made) == count)
        server.close()
        loop.run_until_complete(server.wait_closed())
        return turns
    finally:
        for transport in made:
            transport.close()
        for client in clients:
            client.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_queued_connections_are_all_accepted_within_a_few_turns():
    assert serve_queued(listener.new_event_loop, QUEUED, backlog=1024) <= 20


def test_libuv_alone_takes_one_connection_per_turn():
    """Why api/listener.py exists. If this fails, uvloop accepts in batches again and the module
    can go (api/__main__.py back to loop="uvloop")."""
    assert serve_queued(uvloop.new_event_loop, QUEUED, backlog=1024) >= QUEUED // 2


def test_a_closed_server_accepts_no_more_and_frees_its_port():
    loop = listener.new_event_loop()
    factory, made = recorder_factory()
    try:
        server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        server.close()
        loop.run_until_complete(server.wait_closed())
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        # SO_REUSEADDR, as asyncio's servers: a restart binds the same port at once.
        again = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", port))
        again.close()
        loop.run_until_complete(again.wait_closed())
        assert made == []
    finally:
        loop.close()


def test_a_socket_bound_elsewhere_is_served_as_given():
    """The path of FT_API_WORKERS > 1: uvicorn's supervisor binds, each worker serves `sock`."""
    with socket.create_server(("127.0.0.1", 0)) as bound:
        assert serve_queued(listener.new_event_loop, 5, sock=bound, backlog=64) <= 5


class OutOfDescriptorsOnce(socket.socket):
    """A listening socket whose first accept fails as a process at its open-file limit does."""

    failed = False

    def accept(self):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_then_takes_the_queue(monkeypatch, caplog):
    monkeypatch.setattr(listener, "ACCEPT_RETRY_DELAY", 0.05)
    with OutOfDescriptorsOnce(socket.AF_INET, socket.SOCK_STREAM) as flaky:
        flaky.bind(("127.0.0.1", 0))
        with caplog.at_level(logging.ERROR, logger="ft.listener"):
            serve_queued(listener.new_event_loop, 3, sock=flaky)
        assert flaky.failed
    assert any("Too many open files" in r.getMessage() for r in caplog.records)


def test_served_connections_carry_data_both_ways_without_delay():
    """What uvicorn relies on: the transport made from the accepted socket reads and writes,
    with TCP_NODELAY set as uvloop's own accept sets it (small answers leave at once)."""
    nodelay: list[int] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            nodelay.append(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        def data_received(self, data: bytes) -> None:
            self.transport.write(data.upper())  # type: ignore[attr-defined]

    async def exchange() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"ping")
        answer = await asyncio.wait_for(reader.readexactly(4), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    loop = listener.new_event_loop()
    try:
        answer = loop.run_until_complete(exchange())
    finally:
        loop.close()
    assert answer == b"PING"
    assert nodelay and nodelay[0] != 0
