"""What a run measures: sizes and trial counts of the full run and of `--quick`."""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.client import GiB, KiB, MiB


@dataclass
class Plan:
    name: str
    trials: int  # interleaved rounds for every ratio table (>= 3)
    single_size: int = 256 * MiB  # one connection, ours / tus / nginx sink
    chunk: int = 8 * MiB
    parallel: tuple[int, ...] = (1, 4, 16)
    big_size: int = 1 * GiB  # memory stays flat; last chunk -> complete vs sha256sum
    big_trials: int = 3
    concurrent_files: int = 32
    concurrent_size: int = 32 * MiB
    concurrent_chunk: int = 1 * MiB
    concurrent_trials: int = 3
    sweep: tuple[int, ...] = (64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB)
    sweep_max_chunks: int = 512  # a sweep file has at most this many chunks ...
    sweep_file: int = 256 * MiB  # ... and at most this many bytes
    download_size: int = 256 * MiB
    download_trials: int = 5
    download_repeat: int = 4  # each timed run fetches the file this many times (runs of ~0.5 s)
    devices: tuple[int, ...] = (64, 256, 1000)  # devices at once, 1 MiB in 64 KiB chunks each (bench/devices.py)
    devices_deadline: float = 180.0  # seconds one devices run may take
    quiet_budget: float = 300.0  # seconds the whole run may wait for other people's load to pass
    client_wire_size: int = 256 * MiB  # the client through a cutting proxy (bench/client_links.py)
    client_resume_size: int = 2 * GiB  # the client resuming: time to first byte
    client_rounds: int = 3
    tus_size: int = 256 * MiB  # tus on /files/ against @tus/server (bench/tus.py)
    tus_patch: int = 8 * MiB
    fsync_size: int = 128 * MiB  # FT_FSYNC_CHUNKS=1 against the default (bench/upload.py fsync)
    fsync_chunks: tuple[int, ...] = (8 * MiB, 1 * MiB)
    fsync_connections: tuple[int, ...] = (1, 4)
    filesystems: tuple[str, ...] = ("disk", "tmpfs")
    sections: set[str] = field(default_factory=lambda: set(SECTIONS))

    def sweep_size(self, chunk: int) -> int:
        return min(self.sweep_file, chunk * self.sweep_max_chunks)


SECTIONS = ("upload", "parallel", "big", "concurrent", "sweep", "fsync", "download", "devices", "client", "tus")

FULL = Plan(name="full", trials=5)

QUICK = Plan(
    name="quick",
    trials=3,
    single_size=128 * MiB,
    parallel=(1, 4, 16),
    big_size=256 * MiB,
    big_trials=1,
    concurrent_files=16,
    concurrent_size=16 * MiB,
    concurrent_trials=1,
    sweep=(64 * KiB, 1 * MiB, 8 * MiB),
    sweep_max_chunks=256,
    sweep_file=64 * MiB,
    download_size=128 * MiB,
    download_trials=3,
    download_repeat=2,
    devices=(64, 256),
    quiet_budget=20.0,
    client_wire_size=64 * MiB,
    client_resume_size=512 * MiB,
    client_rounds=1,
    tus_size=64 * MiB,
    fsync_size=32 * MiB,
)
