"""What /proc says about our processes: peak RSS, CPU seconds, children; and about the machine."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return found


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmHWM, VmRSS), 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def peak_rss_mib(pid: int) -> float:
    return status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    return status_kib(pid, "VmRSS") / 1024


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (`echo 5 > clear_refs`, Linux 4.0+; own processes)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, exited threads included (clock ticks: 10 ms steps, so the
    benchmark keeps its timed runs at a few hundred ms or more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def tree_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of `pids` and everything below them, each process counted once."""
    return sum(cpu_seconds(p) for p in {p for root in pids for p in descendants(root)})


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user+nice+system+irq+softirq+steal), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def self_cpu_seconds() -> float:
    """This process (all threads) and its waited-for children (curl, sha256sum)."""
    import resource
    import time

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class CpuMeter:
    """How much CPU our processes used over an interval, and how much everything else did.

    Other engineers' test runs share this 2-CPU machine; `foreign` says how much of the
    interval's CPU went to processes that are not part of the benchmark."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        import time

        self.t0 = time.perf_counter()
        self.busy0 = machine_busy_seconds()
        self.ours0 = tree_cpu_seconds(self.pids) + self_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        import time

        self.seconds = time.perf_counter() - self.t0
        busy = machine_busy_seconds() - self.busy0
        ours = tree_cpu_seconds(self.pids) + self_cpu_seconds() - self.ours0
        self.foreign_cores = max(0.0, busy - ours) / self.seconds if self.seconds else 0.0


@dataclass
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def foreign_cores(pids: list[int], window: float = 0.5) -> float:
    """CPU (in cores) used over `window` seconds by processes outside `pids`' trees and this one."""
    import time

    with CpuMeter(pids) as meter:
        time.sleep(window)
    return meter.foreign_cores


_quiet = {"budget": 240.0, "spent": 0.0}


def set_quiet_budget(seconds: float) -> None:
    """Total time a whole run may spend waiting for quiet (so other people's load cannot stretch it)."""
    _quiet["budget"], _quiet["spent"] = seconds, 0.0


def quiet_spent() -> float:
    return _quiet["spent"]


def wait_quiet(pids: list[int], threshold: float = 0.25, patience: float = 15.0, window: float = 0.5) -> float:
    """Wait (at most `patience` s, and within the run's budget) for a `window` in which processes
    outside `pids` use under `threshold` cores.

    Returns the last measured foreign load: the run goes ahead anyway when the wait is over,
    and the report shows how busy the machine was."""
    import time

    started = time.monotonic()
    allowed = max(0.0, min(patience, _quiet["budget"] - _quiet["spent"]))
    try:
        while True:
            load = foreign_cores(pids, window)
            if load < threshold or time.monotonic() - started >= allowed:
                return load
    finally:
        _quiet["spent"] += time.monotonic() - started
