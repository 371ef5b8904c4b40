"""Callers that ask for the same thing while it is under way share one call.

On a busy event loop a thousand requests can miss the same cache entry, find the same Redis
script missing, or need the first free-space measure in the same turn. Each doing its own call
(or queueing behind a lock, woken one turn each) costs seconds; awaiting one shared task costs
one call, and all of them wake in the same turn.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from functools import partial
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, asyncio.Task[T]] = {}

    async def run(self, key: Hashable, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """`call()`'s result, from the call under way for `key` if there is one, else a new one.
        A caller that gives up (cancelled) leaves the call to the others."""
        task = self._calls.get(key)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(call())
            self._calls[key] = task
            task.add_done_callback(partial(self._forget, key))
        return await asyncio.shield(task)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
