"""api/admission.py: requests that carry upload bytes enter in arrival order, no more than the slots at once; a
slot held past its lease goes to the next in line; a waiter that gives up takes no slot."""

from __future__ import annotations

import asyncio

import pytest

from api.admission import Admission, AdmissionMiddleware


async def wait_for(condition, what: str, seconds: float = 10.0) -> None:
    ends = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > ends:
            raise TimeoutError(f"no {what} after {seconds} s")
        await asyncio.sleep(0)


def test_requests_enter_in_arrival_order_never_more_than_the_slots():
    async def scenario() -> tuple[list[int], int]:
        admission = Admission(slots=3, lease=60)
        entered: list[int] = []
        inside = peak = 0
        gates = [asyncio.Event() for _ in range(12)]

        async def request(index: int) -> None:
            nonlocal inside, peak
            async with admission.slot():
                entered.append(index)
                inside += 1
                peak = max(peak, inside)
                await gates[index].wait()
                inside -= 1

        tasks = [asyncio.create_task(request(i)) for i in range(12)]
        await wait_for(lambda: len(entered) == 3, "three inside")
        assert admission.waiting == 9
        for index in (2, 0, 1, 5, 3, 4, 8, 6, 7, 11, 9, 10):  # they end in any order
            await wait_for(lambda i=index: i in entered, f"request {index} inside")
            gates[index].set()
        await asyncio.gather(*tasks)
        return entered, peak

    entered, peak = asyncio.run(scenario())
    assert entered == list(range(12))
    assert peak == 3


def test_a_slot_held_past_its_lease_goes_to_the_next_request():
    async def scenario() -> None:
        admission = Admission(slots=1, lease=0.05)
        slow_sender = asyncio.Event()  # never set while the second request runs
        second_done = asyncio.Event()

        async def slow() -> None:
            async with admission.slot():
                await slow_sender.wait()

        async def quick() -> None:
            async with admission.slot():
                second_done.set()

        first = asyncio.create_task(slow())
        await asyncio.sleep(0)
        second = asyncio.create_task(quick())
        await asyncio.wait_for(second_done.wait(), 10)  # admitted while the first still runs
        assert not first.done()
        slow_sender.set()
        await asyncio.gather(first, second)
        # Both slots given back once, no more: a third and a fourth find one free slot.
        async with admission.slot():
            assert admission._free.locked()

    asyncio.run(scenario())


def test_a_waiter_that_gives_up_takes_no_slot():
    async def scenario() -> None:
        admission = Admission(slots=1, lease=60)
        release = asyncio.Event()

        async def hold() -> None:
            async with admission.slot():
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        gives_up = asyncio.create_task(hold())
        await wait_for(lambda: admission.waiting == 1, "a waiter")
        gives_up.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gives_up
        assert admission.waiting == 0
        release.set()
        await holder
        async with admission.slot():  # the slot came back
            pass

    asyncio.run(scenario())


def test_the_middleware_holds_admitted_routes_to_the_slots_and_lets_the_others_by():
    """AdmissionMiddleware: with one slot held by a creation, a second creation waits and a
    GET goes on at once; the second enters when the first ends."""

    async def scenario() -> list[str]:
        events: list[str] = []
        hold = asyncio.Event()

        async def app(scope, receive, send) -> None:
            events.append(f"in {scope['method']} {scope['path']}")
            if (scope["method"], scope["path"]) == ("POST", "/files"):
                await hold.wait()
            events.append(f"out {scope['method']} {scope['path']}")

        admitting = AdmissionMiddleware(app, Admission(slots=1, lease=60), [("POST", r"/files/?")])

        def call(method: str, path: str) -> asyncio.Task[None]:
            scope = {"type": "http", "method": method, "path": path, "root_path": ""}
            return asyncio.create_task(admitting(scope, None, None))

        first = call("POST", "/files")
        await wait_for(lambda: "in POST /files" in events, "the first creation inside")
        second = call("POST", "/files/")
        await wait_for(lambda: admitting.admission.waiting == 1, "the second creation waiting")
        await call("GET", "/files")
        assert "in POST /files/" not in events
        hold.set()
        await asyncio.gather(first, second)
        return events

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == [
        "in POST /files",
        "in GET /files",
        "out GET /files",
        "out POST /files",
        "in POST /files/",
        "out POST /files/",
    ]
