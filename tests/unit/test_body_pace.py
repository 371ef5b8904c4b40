"""core/body_pace.py: a body that idles or trickles is given up on; a busy consumer is not."""

from __future__ import annotations

import asyncio

import pytest

from core.body_pace import paced
from core.errors import BodyStalled


async def pieces(*steps):
    """Yield bytes; a number in `steps` is a pause of that many seconds."""
    for step in steps:
        if isinstance(step, (int, float)):
            await asyncio.sleep(step)
        else:
            yield step


async def collect(body, consumer_pause: float = 0.0) -> list[bytes]:
    out = []
    async for piece in body:
        out.append(piece)
        if consumer_pause:
            await asyncio.sleep(consumer_pause)
    return out


def test_a_steady_body_passes_whole():
    body = pieces(b"a", 0.05, b"b", 0.05, b"c")
    assert asyncio.run(collect(paced(body, idle_timeout=0.5))) == [b"a", b"b", b"c"]


def test_a_body_that_stops_is_dropped_after_the_idle_timeout():
    async def run():
        got = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BodyStalled) as raised:
            async for piece in paced(pieces(b"a", 0.1, b"b", 30, b"never"), idle_timeout=0.3):
                got.append(piece)
        assert asyncio.current_task().cancelling() == 0  # the task is not left half-cancelled
        return got, loop.time() - started, raised.value

    got, elapsed, error = asyncio.run(run())
    assert got == [b"a", b"b"]
    assert error.code == "body_timeout" and "0.3 seconds" in error.detail
    assert elapsed < 20  # the 30 s pause was cut short


def test_time_the_consumer_spends_elsewhere_is_not_idle():
    body = pieces(b"a", b"b", b"c")
    assert asyncio.run(collect(paced(body, idle_timeout=0.2), consumer_pause=0.5)) == [b"a", b"b", b"c"]


def test_a_trickle_under_the_minimum_rate_is_dropped():
    trickle = pieces(*[x for _ in range(40) for x in (b"x", 0.02)])  # ~50 bytes/s
    with pytest.raises(BodyStalled) as raised:
        asyncio.run(collect(paced(trickle, idle_timeout=0.2, min_rate=1000)))
    assert "bytes/s" in raised.value.detail
    # The same trickle with no minimum is fine: it never idles for 0.2 s.
    trickle = pieces(*[x for _ in range(20) for x in (b"x", 0.02)])
    assert len(asyncio.run(collect(paced(trickle, idle_timeout=0.2)))) == 20


def test_an_outside_cancellation_is_not_turned_into_a_stall():
    async def run():
        task = asyncio.create_task(collect(paced(pieces(b"a", 30), idle_timeout=10)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
