"""One Redis connection shared by every request of a process, for the two scripts each chunk
runs (claim and commit): commands issued in one turn of the event loop are written with one
system call, and the replies, which Redis sends in the order it received the commands, are
read by one reader and handed back in that order.

Through the pool each command takes a connection (a FIFO permit, a health-check timer), writes
alone (redis-py's write goes through `asyncio.wait_for`, a task per command), reads alone and
gives the connection back: a quarter of the API's CPU per chunk went to those two commands
(bench/chunk_cpu.py --py-spy). Shared, a hundred devices' claims cost one write and one read.

What stays redis-py's: the connection itself (taken once from the client's pool: its address,
credentials, TLS and, with Sentinel, the current primary), the packing of commands and the
parsing of replies, with the socket timeout on each reply. A connection that fails (closed,
timed out, a primary demoted) fails every command in flight on it with redis-py's own
ConnectionError or TimeoutError (503 `unavailable`, as before), goes back to the pool
disconnected, and the next command takes a new one. A command that met a broken connection is
tried once more on a new one, as redis-py's client retries once. A caller that gives up
(cancelled) leaves its reply to be read and dropped: the order of the replies is never lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from core.redis_clients import RedisBusy
from core.single_flight import SingleFlight


class SharedConnection:
    def __init__(self, client: aioredis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: AbstractConnection | None = None
        self._connecting: asyncio.Lock | None = None
        self._replies: deque[asyncio.Future[Any]] = deque()  # one per command written or to write
        self._outgoing: list[bytes] = []  # packed commands of this turn of the loop
        self._flush: asyncio.Handle | None = None
        self._reader: asyncio.Task[None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()
        self._loading: SingleFlight[Any] = SingleFlight()  # SCRIPT LOADs under way, by sha

    async def run_script(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """`script(keys=keys, args=args)`, on the shared connection."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a new process's first calls, or a Redis restarted or failed over
            await self._load(script)
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _load(self, script: AsyncScript) -> None:
        """One SCRIPT LOAD, on this connection, for every caller that found `script` missing at
        once. Each used to load it on a pooled connection of its own: the first 64 chunks of a
        new API process opened 64 connections to do so (first-chunk claim p50 110 ms against
        16 ms once loaded), and a failover would do the same with every chunk in flight."""
        await self._loading.run(script.sha, partial(self.execute, "SCRIPT", "LOAD", script.script))

    async def execute(self, *args: Any) -> Any:
        try:
            return await self._execute(args)
        except RedisBusy:  # the pool stayed full for its whole timeout: no second wait
            raise
        except RedisConnectionError:
            return await self._execute(args)

    async def aclose(self) -> None:
        """Stop the reader; the connection goes back to the pool the client closes."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await asyncio.gather(*self._giving_back, return_exceptions=True)

    async def _execute(self, args: tuple[Any, ...]) -> Any:
        connection = self._connection
        if connection is not None and not connection.is_connected:  # closed under us (the pool's disconnect)
            self._fail(connection, RedisConnectionError("the shared Redis connection was closed"))
            connection = None
        connection = connection or await self._connect()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        self._outgoing.extend(connection.pack_command(*args))
        self._replies.append(reply)
        if self._flush is None:
            self._flush = loop.call_soon(self._write, connection)
        if self._reader is None:
            self._reader = loop.create_task(self._read(connection, self._replies))
        return await reply

    async def _connect(self) -> AbstractConnection:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connection is None:
                # redis-py leaves the pools' get_connection unannotated.
                self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            return self._connection

    def _write(self, connection: AbstractConnection) -> None:
        self._flush = None
        outgoing, self._outgoing = self._outgoing, []
        if connection is not self._connection or not outgoing:
            return
        writer = connection._writer
        if writer is None:
            self._fail(connection, RedisConnectionError("the shared Redis connection was closed"))
            return
        # The transport buffers what the socket does not take at once; a dead one is the reader's to find.
        writer.writelines(outgoing)

    async def _read(self, connection: AbstractConnection, replies: deque[asyncio.Future[Any]]) -> None:
        """Hand out the replies of `connection`'s commands, in order, while there are any."""
        try:
            while replies:
                try:
                    value: Any = await connection.read_response()
                except ResponseError as error:  # an error reply answers its own command only
                    value = error
                if not replies:  # failed meanwhile (see _fail)
                    break
                reply = replies.popleft()
                if reply.done():  # its caller gave up
                    continue
                if isinstance(value, ResponseError):
                    reply.set_exception(value)
                else:
                    reply.set_result(value)
        except BaseException as exc:
            self._fail(connection, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    def _fail(self, connection: AbstractConnection, exc: BaseException) -> None:
        """Fail everything in flight on a broken connection and give it back to the pool,
        disconnected; the next command takes a new one, with a reader of its own."""
        if self._connection is not connection:
            return  # already failed
        self._connection = None
        self._reader = None  # the old one ends with its connection; new commands start their own
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._outgoing = []
        replies, self._replies = self._replies, deque()
        error = exc if isinstance(exc, RedisError) else RedisConnectionError(f"the Redis connection broke: {exc!r}")
        for reply in replies:
            if not reply.done():
                reply.set_exception(type(error)(*error.args))  # one each: a raised exception gathers a traceback
        replies.clear()
        task = asyncio.get_running_loop().create_task(self._give_back(connection))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, connection: AbstractConnection) -> None:
        await connection.disconnect(nowait=True)
        await self._pool.release(connection)
