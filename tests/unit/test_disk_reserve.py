"""The disk reserve kept for the embedded Redis, on the real filesystem."""

from __future__ import annotations

import shutil

from launcher.disk_reserve import DiskReserve


def test_allocated_for_real_and_kept(tmp_path):
    reserve = DiskReserve(tmp_path, size=4 * 1024 * 1024)
    assert reserve.allocate()
    assert reserve.path.stat().st_blocks * 512 >= reserve.size  # blocks taken, not a sparse file
    reserve.check()  # plenty of room: stays
    assert reserve.path.exists()


def test_released_when_the_disk_is_nearly_full_and_not_taken_back_without_room(tmp_path, capsys):
    # A reserve larger than the free space: for it, the disk is "nearly full".
    reserve = DiskReserve(tmp_path, size=shutil.disk_usage(tmp_path).free + 1024**3)
    reserve.path.write_bytes(b"x")
    reserve.check()
    assert not reserve.path.exists()
    assert "nearly full" in capsys.readouterr().out
    assert not reserve.allocate()
    reserve.check()
    assert not reserve.path.exists()
