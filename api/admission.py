"""Requests that carry upload bytes served in arrival order: at most FT_CHUNK_SLOTS of them make
progress at once. They are the chunks (`POST /upload/{file_id}`), tus PATCHes, and tus
creations (`POST /files`), which may carry the first bytes and come all at once when a fleet
starts (a thousand creations let in together took p50 1.8 s, max 3.3 s; in order, 0.7 / 1.2 s).

One API process, one core. When a thousand devices send a chunk at the same moment, each
request needs some eight turns of the event loop (its body, a Redis round trip, a thread hop,
another round trip, the answer), and every turn serves all of them: each advances a step per
turn, so nearly all finish together, at the end of the burst. With a few dozen admitted at a
time, turns are short, the admitted finish in a few of them, and the rest wait their turn with
their bodies in the kernel (TCP pushes back on the device). Measured with `python -m
bench.devices --devices 1000`: request p99 2.3 s -> 1.4 s, the API's peak RSS 233 -> 164 MiB,
uploads per second unchanged or higher.

A slot is a lease, not a lock: a request gives its slot up after FT_CHUNK_SLOT_LEASE seconds
and goes on without one. A device on a slow link sends its chunk for seconds or minutes; if it
kept its slot, a few dozen such devices would keep every other chunk waiting.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send


class Admission:
    def __init__(self, slots: int, lease: float) -> None:
        self._free = asyncio.BoundedSemaphore(slots)  # FIFO: a newcomer queues behind the waiters
        self._lease = lease
        self.waiting = 0  # requests queued for a slot

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a slot, in arrival order; hold it until the block ends or the lease does."""
        self.waiting += 1
        try:
            await self._free.acquire()
        finally:
            self.waiting -= 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._free.release()

        lease = asyncio.get_running_loop().call_later(self._lease, release)
        try:
            yield
        finally:
            lease.cancel()
            release()


class AdmissionMiddleware:
    """Sends the requests of `routes` (a method and a path pattern, matched whole) through
    `admission`; every other request goes straight on."""

    def __init__(self, app: ASGIApp, admission: Admission, routes: Sequence[tuple[str, str]]) -> None:
        self.app = app
        self.admission = admission
        self._routes = [(method, re.compile(pattern)) for method, pattern in routes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._admits(scope["method"], get_route_path(scope)):
            async with self.admission.slot():
                await self.app(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _admits(self, method: str, path: str) -> bool:
        return any(method == m and pattern.fullmatch(path) for m, pattern in self._routes)
