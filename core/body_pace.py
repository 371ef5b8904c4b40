"""A minimum pace for request bodies. Without one a chunk that trickles (a byte now and then)
holds its claimed range (other writers of those bytes get 409) and a connection for as long
as it trickles. Two rules, each answered 408 `body_timeout` after the chunk is dropped and its
claim released (core/uploads.py):

- idle: no byte for `idle_timeout` seconds (FT_BODY_IDLE_TIMEOUT);
- slow: past the first `idle_timeout` seconds, fewer than `min_rate` bytes a second on average
  since the body began (FT_BODY_MIN_RATE; 0 turns it off).

Only time spent waiting for the client makes a body idle: while the consumer is busy elsewhere
(a Redis call, a disk write) it is not. A timeout per read (anyio.fail_after) costs ~60 µs per
piece, too much at 20,000 pieces a second; here one timer per `idle_timeout` watches instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from core.errors import BodyStalled


async def paced(body: AsyncIterator[bytes], idle_timeout: float, min_rate: float = 0.0) -> AsyncIterator[bytes]:
    """`body`'s pieces as they come; BodyStalled when it idles or trickles (see above)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("paced() cancels its own task's read: it must run in a task")
    pieces = body.__aiter__()
    started = loop.time()
    received = 0
    waiting_since: float | None = None
    stalled = False
    timer: asyncio.TimerHandle

    def watch() -> None:
        nonlocal timer, stalled
        now = loop.time()
        if waiting_since is not None and now - waiting_since >= idle_timeout:
            stalled = True
            task.cancel()  # lands in the read below: that is what the task is waiting on
        else:
            timer = loop.call_at((waiting_since if waiting_since is not None else now) + idle_timeout, watch)

    timer = loop.call_later(idle_timeout, watch)
    try:
        while True:
            waiting_since = loop.time()
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not stalled:
                    raise
                task.uncancel()
                raise BodyStalled(
                    f"no byte of the body arrived for {idle_timeout:g} seconds; the chunk was dropped, send it again"
                ) from None
            now, waiting_since = loop.time(), None
            received += len(piece)
            elapsed = now - started
            if min_rate and elapsed > idle_timeout and received < min_rate * elapsed:
                raise BodyStalled(
                    f"the body arrived at {received / elapsed:.0f} bytes/s, under the"
                    f" {min_rate:g} bytes/s this server needs; the chunk was dropped"
                )
            yield piece
    finally:
        timer.cancel()
