"""Room kept for the embedded Redis on the data disk.

Uploads and Redis's append-only file share FT_DATA_DIR's disk. The API already refuses a
chunk that would leave less than FT_MIN_FREE_BYTES free (507), but anything else may still
fill the disk, and a Redis that cannot append refuses every write. So the launcher
allocates a small file beside Redis's data at start, and deletes it when the disk is
nearly full: the space it frees is what Redis then appends into. It is allocated again
once there is room.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from launcher.children import say

RESERVE_BYTES = 64 * 1024 * 1024


class DiskReserve:
    def __init__(self, redis_dir: Path, size: int = RESERVE_BYTES) -> None:
        self.path = redis_dir / "disk-reserve"
        self.size = size

    def free(self) -> int:
        return shutil.disk_usage(self.path.parent).free

    def allocate(self) -> bool:
        """Take the reserve when there is room for it twice over; True when it is in place."""
        if self.path.exists():
            return True
        if self.free() < 2 * self.size:
            return False
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.size)
        except OSError:
            self.path.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)
        return True

    def check(self) -> None:
        """Release the reserve when the disk is nearly full; take it back when it is not."""
        if self.path.exists() and self.free() < self.size:
            self.path.unlink(missing_ok=True)
            say(
                f"the data disk is nearly full: released {self.size >> 20} MiB kept for Redis "
                f"({self.path}); free some space"
            )
        elif not self.path.exists() and self.allocate():
            say("the data disk has room again: Redis's reserve is back in place")
