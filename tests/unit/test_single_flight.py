"""core/single_flight.py: callers of one key share the call under way; a caller that gives up
leaves it to the others; once it is done, the next caller starts a new one."""

from __future__ import annotations

import asyncio

import pytest

from core.single_flight import SingleFlight


def test_callers_share_the_call_under_way_and_a_done_one_is_not_reused():
    async def scenario() -> None:
        flight: SingleFlight[int] = SingleFlight()
        started = 0
        release = asyncio.Event()

        async def call() -> int:
            nonlocal started
            started += 1
            await release.wait()
            return started

        callers = [asyncio.create_task(flight.run("k", call)) for _ in range(50)]
        other = asyncio.create_task(flight.run("other key", call))
        await asyncio.sleep(0)
        callers[0].cancel()  # gives up: the call goes on for the others
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await callers[0]
        results = await asyncio.gather(*callers[1:], other)
        assert started == 2
        assert sorted(set(results)) == [1, 2]
        assert await flight.run("k", call) == 3  # the earlier call had ended: a new one

    asyncio.run(scenario())
