"""Children that die with their parent (Linux PR_SET_PDEATHSIG), so a killed launcher or test
run leaves no API, worker or Redis behind."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(parent_pid: int | None = None) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: SIGTERM the child when `parent_pid` (default: the
    caller) dies. Linux ties this to the *thread* that forked, so start children from a thread
    that lives as long as they should (the main thread). A no-op without prctl (macOS)."""
    parent = parent_pid if parent_pid is not None else os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return preexec
