"""Progress display: a rich bar on a terminal, plain periodic lines otherwise, nothing with --quiet.

All reporters are safe to use from several threads (parallel upload workers).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from client.units import format_duration, format_size


class Task:
    """One transfer (or hashing pass) being reported."""

    def advance(self, n: int) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass

    def __enter__(self) -> Task:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)


class Reporter:
    """The silent reporter (`--quiet`, and the library's default)."""

    def task(self, description: str, total: int, completed: int = 0) -> Task:
        return Task()

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PlainTask(Task):
    def __init__(self, reporter: PlainReporter, description: str, total: int, completed: int) -> None:
        self.reporter = reporter
        self.description = description
        self.total = total
        self.completed = completed
        self.initial = completed
        self.started = time.monotonic()
        self.last_print = self.started
        self.lock = threading.Lock()
        self.closed = False

    def line(self) -> str:
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = (self.completed - self.initial) / elapsed
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        eta = (self.total - self.completed) / rate if rate > 0 else None
        return (
            f"{self.description}: {format_size(self.completed)} / {format_size(self.total)} "
            f"({pct:.0f}%), {format_size(rate)}/s, ETA {format_duration(eta)}"
        )

    def advance(self, n: int) -> None:
        with self.lock:
            self.completed += n
            now = time.monotonic()
            if now - self.last_print >= self.reporter.interval:
                self.last_print = now
                self.reporter.write(self.line())

    def close(self, failed: bool = False) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                elapsed = format_duration(time.monotonic() - self.started)
                self.reporter.write(
                    f"{self.line()} - " + (f"stopped after {elapsed}" if failed else f"done in {elapsed}")
                )


class PlainReporter(Reporter):
    """For logs and pipes: a line every `interval` seconds per task, and one when it ends."""

    def __init__(self, stream: TextIO | None = None, interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            print(text, file=self.stream, flush=True)

    def task(self, description: str, total: int, completed: int = 0) -> Task:
        return _PlainTask(self, description, total, completed)

    def message(self, text: str) -> None:
        self.write(text)


class _RichTask(Task):
    def __init__(self, progress, task_id) -> None:
        self.progress = progress
        self.task_id = task_id

    def advance(self, n: int) -> None:
        self.progress.update(self.task_id, advance=n)

    def close(self, failed: bool = False) -> None:
        self.progress.stop_task(self.task_id)


class RichReporter(Reporter):
    """A live bar with bytes, rate and ETA, on the terminal behind stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class BinarySpeedColumn(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text("?/s" if speed is None else f"{format_size(speed)}/s", style="progress.data.speed")

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            BinarySpeedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()

    def task(self, description: str, total: int, completed: int = 0) -> Task:
        return _RichTask(self.progress, self.progress.add_task(description, total=total, completed=completed))

    def message(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool = False, stream: TextIO | None = None) -> Reporter:
    if quiet:
        return Reporter()
    stream = stream or sys.stderr
    if stream.isatty():
        try:
            return RichReporter()
        except Exception:
            pass
    return PlainReporter(stream)
