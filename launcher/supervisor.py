"""Keeps the launcher's children running, as a process manager does.

A child that dies is restarted after a delay that doubles with each quick death
(0.5 s, 1 s, 2 s, ... at most 30 s); a run of `STABLE_AFTER` seconds resets it. After
`GIVE_UP_AFTER` quick deaths in a row the child is crash-looping: the supervisor says why
(its exit status and the last lines of its log) and gives up, and the launcher stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from launcher.children import Child, describe_exit, say, stop_all

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE_AFTER = 30.0
GIVE_UP_AFTER = 6


class CrashLoop(Exception):
    """A child kept dying right after each start; the message says which and why."""


@dataclass
class Service:
    """A child the supervisor owns: how to start it, and its restart bookkeeping."""

    name: str
    start: Callable[[], Child]
    child: Child | None = None
    quick_deaths: int = 0
    restart_at: float | None = None
    stop_last: bool = False  # the embedded Redis: stopped after everything that talks to it

    def run(self) -> None:
        self.child = self.start()
        self.restart_at = None


def restart_delay(quick_deaths: int) -> float:
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, quick_deaths - 1))


class Supervisor:
    def __init__(self, services: list[Service]) -> None:
        self.services = services

    def check(self, now: float | None = None) -> None:
        """Notice deaths, restart what is due; raises CrashLoop when a child keeps dying."""
        now = time.monotonic() if now is None else now
        for service in self.services:
            child = service.child
            if child is not None and child.poll() is not None:
                self._died(service, child, now)
            elif child is None and service.restart_at is not None and now >= service.restart_at:
                service.run()
                say(f"{service.name} restarted (pid {service.child.pid})")

    def _died(self, service: Service, child: Child, now: float) -> None:
        child.reap()
        lived = now - child.started_at
        service.quick_deaths = 0 if lived >= STABLE_AFTER else service.quick_deaths + 1
        service.child = None
        reason = describe_exit(child.popen.returncode)
        tail = child.log_tail()
        if service.quick_deaths >= GIVE_UP_AFTER:
            raise CrashLoop(
                f"{service.name} keeps dying ({service.quick_deaths} times in a row, each within "
                f"{STABLE_AFTER:.0f} s of its start; last: {reason}); giving up. "
                f"Last lines of {child.log_path}:\n" + "\n".join(f"    {line}" for line in tail)
            )
        delay = max(FIRST_DELAY, restart_delay(service.quick_deaths))
        service.restart_at = now + delay
        say(f"{service.name} died ({reason}) after {lived:.1f} s; restarting in {delay:g} s (log: {child.log_path})")
        if child.popen.returncode > 0 and tail:
            say(f"    last line: {tail[-1]}")

    def children(self) -> list[Child]:
        return [service.child for service in self.services if service.child is not None]

    def stop(self, timeout: float, hurry: Callable[[], bool]) -> None:
        """Stop the application processes together, then those marked `stop_last`."""
        for service in self.services:
            service.restart_at = None
        for last in (False, True):
            group = [s.child for s in self.services if s.child is not None and s.stop_last == last]
            if group:
                stop_all(group, timeout, hurry)
