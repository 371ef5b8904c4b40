"""Blocking calls on the chunk path: a pool of threads that never waits for the event loop.

anyio's `to_thread.run_sync` holds one of its 40 tokens from the call until the caller resumes,
which is one turn of the event loop after the thread has finished. On a loop serving a thousand
devices a turn takes 50-100 ms, so the default pool passed a few hundred calls a second however
short they were: with 1,000 devices (bench/devices.py) the first chunks' staging files waited
p50 0.9 s and p99 2.4 s for a token, to run for 1-5 ms. In this pool a thread takes the next
call as soon as it has finished one; a caller still resumes a turn later, but no call waits for
another caller's turn. Calls off the chunk path (downloads, the periodic jobs) keep anyio's.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

THREADS = 16  # calls at once: each is a metadata operation or a small file write, not a transfer

_pool = ThreadPoolExecutor(THREADS, thread_name_prefix="ft-blocking")


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in the pool, with the caller's context variables (its request id). A caller
    cancelled meanwhile is not waited for: the call runs to its end, and a result nobody will
    receive is closed if it can be (a staging file's writer holds a descriptor)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_pool, partial(contextvars.copy_context().run, func, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_unclaimed)
        raise


def _close_unclaimed(future: asyncio.Future[Any]) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    close = getattr(future.result(), "close", None)
    if callable(close):
        close()
