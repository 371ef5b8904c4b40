"""Range arithmetic on inclusive byte intervals `(start, end)`, as pure functions."""

from __future__ import annotations

from collections.abc import Iterable

Interval = tuple[int, int]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with touching and overlapping intervals joined."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def missing(received: Iterable[Interval], total: int) -> list[Interval]:
    """The gaps of `[0, total)` not covered by `received`."""
    gaps: list[Interval] = []
    cursor = 0
    for start, end in merge(received):
        if start > cursor:
            gaps.append((cursor, start - 1))
        cursor = max(cursor, end + 1)
    if cursor < total:
        gaps.append((cursor, total - 1))
    return gaps


def covered_bytes(intervals: Iterable[Interval]) -> int:
    return sum(end - start + 1 for start, end in merge(intervals))


def first_missing(received: Iterable[Interval], total: int) -> int:
    """The first byte not received; `total` when none is missing."""
    gaps = missing(received, total)
    return gaps[0][0] if gaps else total
