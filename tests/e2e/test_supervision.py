"""`make run` keeps running through the death of any child and a stalled or restarted Redis.

One launcher (embedded Redis, as a user runs it) takes every fault in turn while an upload
has staged bytes; afterwards the upload completes with the right SHA-256. Each recovery
time is printed (`pytest -s`); docs/RELIABILITY.md has the figures. The waits' timeouts
are bounds on recovery, generous for a loaded machine, not performance targets.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time

import httpx
import pytest

from tests.launcher_support import Launcher, alive, process_tree
from tests.support import bearer, login, new_id, send_chunk, wait_for_state, wait_until

pytestmark = pytest.mark.slow
RECOVERY_BOUND = 60.0  # seconds


@pytest.fixture
def launcher(tmp_path):
    launcher = Launcher(tmp_path, FT_ADMIN_USERNAME="boss", FT_ADMIN_PASSWORD="boss-password")
    yield launcher
    launcher.close()


def count(launcher: Launcher, log: str, needle: str) -> int:
    path = launcher.data_dir / "logs" / f"{log}.log"
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


def recovered(what: str, since: float, check) -> float:
    wait_until(check, timeout=RECOVERY_BOUND, interval=0.1, what=what)
    seconds = time.monotonic() - since
    print(f"\n  {what}: {seconds:.1f} s")
    return seconds


def test_every_child_killed_and_redis_stalled_or_restarted(launcher, client):
    launcher.wait_ready()
    token = login(launcher.url, "boss", "boss-password")
    data, file_id = os.urandom(3_000_000), new_id()
    half = len(data) // 2
    assert send_chunk(client, launcher.url, token, file_id, data, 0, half - 1).status_code == 200
    time.sleep(1.5)  # let the embedded Redis's append-only file (fsync every second) take the chunk's state
    figures = {}

    def health_green():
        return launcher.healthy()

    def flower_up():
        auth = ("flower", launcher.flower_password())
        return httpx.get(f"{launcher.flower}/healthcheck", auth=auth, timeout=2).status_code == 200

    # The API: /health answers again.
    api = launcher.child_pid("api")
    os.kill(api, signal.SIGKILL)
    figures["kill -9 api"] = recovered("api back (/health green)", time.monotonic(), health_green)
    assert launcher.child_pid("api") != api

    # The worker: a new one is ready (its heartbeat name is the same, so /health never turned red).
    readies = count(launcher, "worker", " ready.")
    worker, killed = launcher.child_pid("worker"), time.monotonic()
    os.kill(worker, signal.SIGKILL)
    figures["kill -9 worker"] = recovered(
        "worker back (ready)", killed, lambda: count(launcher, "worker", " ready.") > readies
    )

    # Beat: the new one takes the schedule lock the dead one held.
    locks = count(launcher, "beat", "beat: Acquired lock")
    beat, killed = launcher.child_pid("beat"), time.monotonic()
    os.kill(beat, signal.SIGKILL)
    figures["kill -9 beat"] = recovered(
        "beat back (lock taken over)", killed, lambda: count(launcher, "beat", "beat: Acquired lock") > locks
    )

    flower, killed = launcher.child_pid("flower"), time.monotonic()
    os.kill(flower, signal.SIGKILL)
    figures["kill -9 flower"] = recovered(
        "flower back (answers)", killed, lambda: launcher.child_pid("flower") != flower and flower_up()
    )

    # The embedded Redis, killed: restarted at the same address, its data from the append-only file.
    redis_pid, killed = launcher.child_pid("redis"), time.monotonic()
    os.kill(redis_pid, signal.SIGKILL)
    wait_until(lambda: not launcher.healthy(), timeout=10, what="/health to notice")
    figures["kill -9 redis"] = recovered("redis back (/health green)", killed, health_green)
    status = client.get(f"{launcher.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["received_bytes"] == half, status

    # Redis stalled for 20 s: worker and beat ride it out (not restarted).
    worker, beat = launcher.child_pid("worker"), launcher.child_pid("beat")
    redis_pid = launcher.child_pid("redis")
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        time.sleep(20)  # the fault itself: Redis frozen for 20 s
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    figures["Redis stalled 20 s"] = recovered("after a 20 s stall (/health green)", time.monotonic(), health_green)
    ticks = count(launcher, "beat", "Sending due task")
    assert (launcher.child_pid("worker"), launcher.child_pid("beat")) == (worker, beat)

    # Redis restarted (SIGTERM: it saves and exits; the launcher starts it again).
    os.kill(redis_pid, signal.SIGTERM)
    wait_until(lambda: not alive(redis_pid), timeout=20, what="redis to exit")
    figures["Redis restarted"] = recovered("after a Redis restart (/health green)", time.monotonic(), health_green)
    assert (launcher.child_pid("worker"), launcher.child_pid("beat")) == (worker, beat)
    wait_until(lambda: count(launcher, "beat", "Sending due task") > ticks, timeout=120, what="beat to schedule again")

    # The upload survived all of it and completes.
    assert send_chunk(client, launcher.url, token, file_id, data, half, len(data) - 1).status_code == 200
    done = wait_for_state(client, launcher.url, token, file_id, timeout=RECOVERY_BOUND)
    assert done["state"] == "complete" and done["sha256"] == hashlib.sha256(data).hexdigest()

    assert launcher.proc.alive()
    log = launcher.proc.log()
    for name in ("api", "worker", "beat", "flower", "redis"):
        assert f"{name} died (killed by SIGKILL)" in log and f"{name} restarted" in log, name
    assert "redis died (exit status 0)" in log
    print("\n  " + "\n  ".join(f"{k}: {v:.1f} s" for k, v in figures.items()))
    launcher.stop(signal.SIGTERM)
    assert launcher.proc.popen.returncode == 0


def test_a_crash_loop_is_given_up_with_its_reason(tmp_path):
    """Flower's port is taken: Flower dies at every start; after several tries make run stops."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        launcher = Launcher(tmp_path, args=("--verbose",), FT_FLOWER_PORT=str(blocker.getsockname()[1]))
        try:
            wait_until(lambda: "flower died" in launcher.proc.log(), timeout=60, what="flower to die once")
            tree = process_tree(launcher.proc.pid)
            assert launcher.proc.popen.wait(120) == 1
        finally:
            launcher.close()
    log = launcher.proc.log()
    assert "flower keeps dying (6 times in a row" in log and "giving up" in log, log[-3000:]
    assert log.count("flower restarted") == 5
    assert "flower   | " in log  # --verbose: the children's output, tagged
    wait_until(lambda: not any(alive(pid) for pid in tree), timeout=30, what="everything to stop")
