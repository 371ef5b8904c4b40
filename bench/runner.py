"""Interleaved trials: every contender once per round, the order rotating, the machine quiet first."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.procs import CpuMeter, self_cpu_seconds, tree_cpu_seconds, wait_quiet


@dataclass
class Contender:
    name: str
    run: Callable[[], dict]  # one timed run; returns metrics, at least "mbps" or "seconds"
    server_pids: Callable[[], list[int]]  # whose CPU counts as "server"
    after: Callable[[dict], None] | None = None  # untimed clean-up (wait for assembly, delete files)


@dataclass
class Series:
    """All runs of one contender: metric name -> list of values, one per trial."""

    name: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, metrics: dict) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.values.setdefault(key, []).append(float(value))

    def median(self, key: str) -> float | None:
        vals = self.values.get(key)
        return statistics.median(vals) if vals else None

    def spread(self, key: str) -> tuple[float, float, float] | None:
        vals = self.values.get(key)
        if not vals:
            return None
        return statistics.median(vals), min(vals), max(vals)

    def as_dict(self) -> dict:
        return {"name": self.name, "values": self.values}


def sync_disks() -> float:
    """Flush dirty pages (untimed for the figures) so no run pays for the previous one's writeback."""
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def run_interleaved(
    contenders: list[Contender],
    trials: int,
    all_pids: Callable[[], list[int]],
    log: Callable[[str], None],
    label: str,
    quiet: bool = True,
) -> dict[str, Series]:
    series = {c.name: Series(c.name) for c in contenders}
    for trial in range(trials):
        k = trial % len(contenders)
        order = contenders[k:] + contenders[:k]
        for contender in order:
            before = wait_quiet(all_pids()) if quiet else 0.0
            server = contender.server_pids()
            s0, c0 = tree_cpu_seconds(server), self_cpu_seconds()
            with CpuMeter(all_pids()) as meter:
                metrics = contender.run()
            seconds = metrics.get("seconds") or meter.seconds
            metrics["server_cores"] = (tree_cpu_seconds(server) - s0) / seconds
            metrics["client_cores"] = (self_cpu_seconds() - c0) / seconds
            metrics["foreign_cores"] = meter.foreign_cores
            metrics["foreign_before"] = before
            metrics["flush_seconds"] = sync_disks()  # what this run left dirty, before anything is deleted
            if contender.after is not None:
                contender.after(metrics)
            sync_disks()
            series[contender.name].add(metrics)
            shown = f"{metrics['mbps']:7.0f} MB/s" if "mbps" in metrics else f"{seconds:7.3f} s"
            log(
                f"  {label} trial {trial + 1}/{trials} {contender.name:<22} {shown}"
                f"  server {metrics['server_cores']:.2f} client {metrics['client_cores']:.2f}"
                f" others {metrics['foreign_cores']:.2f} cores"
            )
    return series
