"""core/threads.py run_blocking: calls run without waiting for the event loop's turns, see the
caller's context variables, and a cancelled caller's result is closed, not leaked."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading

from core.threads import THREADS, run_blocking

who = contextvars.ContextVar("who", default="nobody")


def test_calls_do_not_wait_for_the_loop_to_turn():
    """More calls than threads all run while the loop is held by one coroutine: a thread takes
    the next call as soon as it is done (anyio's run_sync holds a token until its caller
    resumes, so only 40 of these would run)."""
    calls = 4 * THREADS + 50
    ran = 0
    lock = threading.Lock()
    all_ran = threading.Event()

    def call() -> None:
        nonlocal ran
        with lock:
            ran += 1
            if ran == calls:
                all_ran.set()

    async def scenario() -> bool:
        tasks = [asyncio.create_task(run_blocking(call)) for _ in range(calls)]
        await asyncio.sleep(0)  # each task submits its call
        finished = all_ran.wait(timeout=20)  # blocking: the loop does not turn meanwhile
        await asyncio.gather(*tasks)
        return finished

    assert asyncio.run(scenario())
    assert ran == calls


def test_the_call_sees_the_callers_context_and_returns_its_result():
    async def scenario() -> tuple[str, str]:
        who.set("request-7")
        return await run_blocking(lambda suffix: who.get() + suffix, "!"), threading.current_thread().name

    seen, loop_thread = asyncio.run(scenario())
    assert seen == "request-7!"
    assert loop_thread == threading.main_thread().name


def test_a_cancelled_callers_result_is_closed():
    release = threading.Event()
    closed = asyncio.Event()

    class Handle:
        def close(self) -> None:
            loop.call_soon_threadsafe(closed.set)

    def open_handle() -> Handle:
        release.wait(timeout=20)
        return Handle()

    async def scenario() -> None:
        waiter = asyncio.create_task(run_blocking(open_handle))
        await asyncio.sleep(0)
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
        assert waiter.cancelled()
        release.set()  # the call ends after its caller gave up
        await asyncio.wait_for(closed.wait(), 20)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_an_error_reaches_the_caller():
    def fail() -> None:
        raise FileNotFoundError("gone")

    async def scenario() -> str:
        try:
            await run_blocking(fail)
        except FileNotFoundError as exc:
            return str(exc)
        return "no error"

    assert asyncio.run(scenario()) == "gone"
