"""The launcher's child processes: each in its own session, its output in its own log file.

Own session: a Ctrl-C in the terminal reaches only the launcher, which then stops the
children itself, in order (the embedded Redis last). PR_SET_PDEATHSIG (Linux): if the
launcher is SIGKILLed, the kernel sends each child SIGTERM, so nothing is left behind.

Output goes to FT_DATA_DIR/logs/NAME.log; with --verbose it is also copied to the
terminal, each line tagged with the child's name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ops.process import die_with_parent

NAME_WIDTH = 8
_print_lock = threading.Lock()


def say(text: str, name: str | None = None) -> None:
    """One line on the launcher's stdout (tagged when it is a child's); never lets a closed
    terminal stop us."""
    line = f"{name:<{NAME_WIDTH}} | {text}" if name else text
    with _print_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


def describe_exit(status: int) -> str:
    """`exit status 1` or `killed by SIGKILL`, from a Popen return code."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


class Child:
    """One process (and its process group) started by the launcher."""

    def __init__(
        self, name: str, args: list[str], env: dict[str, str], cwd: str, log_path: Path, echo: bool = False
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.started_at = time.monotonic()
        log = open(log_path, "ab")  # noqa: SIM115 - closed below, or by the thread that copies the output
        try:
            self.popen = subprocess.Popen(
                args,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if echo else log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(os.getpid()),  # noqa: PLW1509 - only prctl, which needs the child
            )
        except BaseException:
            log.close()
            raise
        self.pid = self.popen.pid
        self._pump: threading.Thread | None = None
        if echo:
            self._pump = threading.Thread(target=self._copy_output, args=(log,), name=f"out-{name}", daemon=True)
            self._pump.start()
        else:
            log.close()

    def _copy_output(self, log) -> None:
        with log:
            for raw in iter(self.popen.stdout.readline, b""):
                log.write(raw)
                log.flush()
                say(raw.decode(errors="replace").rstrip("\r\n"), self.name)

    def poll(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def reap(self) -> None:
        """After the main process ended: kill what it left in its group (a uvicorn or Celery
        pool process would keep the port or the queue), and stop copying its output."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait()
        if self._pump is not None:
            self._pump.join(timeout=2)

    def log_tail(self, lines: int = 8) -> list[str]:
        """The last lines of its log file: the likely reason it died."""
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 16384))
                text = handle.read().decode(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()][-lines:]


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
            say(f"{child.name} did not stop within {timeout:.0f}s: killing it")
        child.reap()
