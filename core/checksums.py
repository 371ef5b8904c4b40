"""CRC-32 (IEEE, as `zlib.crc32`), from zlib-ng when it is installed: the same values, about
ten times faster, which is a sixth of the API's CPU per uploaded byte (docs/BENCHMARKS.md)."""

from __future__ import annotations

try:
    from zlib_ng.zlib_ng import crc32
except ImportError:  # pragma: no cover - zlib-ng is in requirements.txt; zlib gives the same values
    from zlib import crc32

__all__ = ["crc32"]
