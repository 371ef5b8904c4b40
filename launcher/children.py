"""The launcher's child processes: each in its own session, its output tagged with its name.

Own session: a Ctrl-C in the terminal reaches only the launcher, which then stops the
children itself, in order (the embedded Redis last). PR_SET_PDEATHSIG (Linux): if the
launcher is SIGKILLed, the kernel sends each child SIGTERM, so nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from ops.process import die_with_parent

NAME_WIDTH = 8
_print_lock = threading.Lock()


def say(name: str, text: str) -> None:
    """One tagged line on the launcher's stdout; never lets a closed terminal stop us."""
    with _print_lock:
        try:
            sys.stdout.write(f"{name:<{NAME_WIDTH}} | {text}\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


class Child:
    """One process (and its process group) started by the launcher."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: str) -> None:
        self.name = name
        self.popen = subprocess.Popen(
            args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent(os.getpid()),
        )
        self.pid = self.popen.pid
        self._pump = threading.Thread(target=self._copy_output, name=f"out-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        for raw in iter(self.popen.stdout.readline, b""):
            say(self.name, raw.decode(errors="replace").rstrip("\r\n"))

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(children: list[Child], timeout: float, hurry: Callable[[], bool] = lambda: False) -> None:
    """SIGTERM every child's process group, wait up to `timeout`, then SIGKILL what is left.

    `hurry()` turning true (a second Ctrl-C) skips the wait. The final SIGKILL to each
    group also removes anything a child left behind in its group after it exited.
    """
    for child in children:
        if child.poll() is None:
            child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not hurry():
        if all(child.poll() is not None for child in children):
            break
        time.sleep(0.05)
    for child in children:
        if child.poll() is None:
            say("launcher", f"{child.name} did not stop within {timeout:.0f}s: killing it")
        child.signal_group(signal.SIGKILL)
        child.popen.wait()
        child._pump.join(timeout=2)
