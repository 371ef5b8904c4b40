"""Redis that loses its primary (README "Redis failover"): real processes throughout. A primary,
a replica and three sentinels (tests/sentinel_support.py), an API, a worker and beat on
FT_REDIS_URL=sentinel://...; concurrent uploads; the primary killed with SIGKILL mid-run.

Writes the primary acknowledged but had not yet replicated are lost with it. The test makes
sure some are: the replica is stopped (SIGSTOP, shorter than the sentinels' down-after) and
its replication link cut while chunks keep being acknowledged, then the primary is killed and
the replica resumed and promoted. A chunk whose record was lost is simply missing from /status's missing_ranges; its
uploader sends it again (its bytes are written again at the same offset) and the file
completes byte-identical. The server never claims a byte that was not sent: after the
failover what /status holds is within what was acknowledged (plus the one chunk in doubt).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest

from core import intervals
from tests.sentinel_support import running_sentinel_set, wait_promoted
from tests.support import (
    Proc,
    bearer,
    new_id,
    running_stack,
    send_chunk,
    service_env,
    wait_for_state,
    wait_until,
    workers_command,
)

pytestmark = pytest.mark.slow

KiB, MiB = 1024, 1024 * 1024
FILES = 4
FILE_BYTES = 12 * MiB
CHUNK_BYTES = 128 * KiB
CLAIM_LEASE = 10  # seconds: a chunk in flight at the kill may hold its range this long on the new primary
REPLICA_STOP_MAX = 0.5  # seconds; well under the sentinels' down-after (1 s), so the replica stays eligible


@dataclass
class Uploader:
    """One device: sends its file chunk by chunk; after any failure resumes from /status."""

    url: str
    token: str
    data: bytes
    clock: Clock
    file_id: str = field(default_factory=lambda: new_id("failover"))
    acked: list[tuple[int, int]] = field(default_factory=list)  # ranges answered 200, inclusive
    lost_bytes: int = 0  # acknowledged, then missing from /status after the failover
    violations: list[str] = field(default_factory=list)
    resyncs: int = 0
    refusals: set = field(default_factory=set)  # (status, code) of every answer but 200
    resumed_at: float | None = None  # its first 200 to a chunk sent after the kill
    error: BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 300
            with httpx.Client(timeout=30) as client:
                todo = [(0, len(self.data) - 1)]
                while todo is not None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.file_id} not complete after 300 s")
                    failed = self.send(client, todo)
                    if failed is None and not todo:
                        time.sleep(0.1)  # all received, not yet assembling: ask again shortly
                    todo = self.missing(client, failed)
        except BaseException as exc:
            self.error = exc

    def send(self, client: httpx.Client, todo: list[tuple[int, int]]) -> tuple[int, int] | None:
        """Send the ranges in chunks; the chunk that failed (its fate unknown), or None."""
        sha = hashlib.sha256(self.data).hexdigest()
        for first, last in todo:
            for start in range(first, last + 1, CHUNK_BYTES):
                end = min(start + CHUNK_BYTES, last + 1) - 1
                sent = time.monotonic()
                try:
                    response = send_chunk(
                        client, self.url, self.token, self.file_id, self.data, start, end, X_File_SHA256=sha
                    )
                except httpx.TransportError:
                    return start, end
                if response.status_code != 200:
                    self.refusals.add((response.status_code, response.json().get("code")))
                    return start, end
                self.clock.answered(sent)
                if self.clock.killed_at is not None and sent > self.clock.killed_at and self.resumed_at is None:
                    self.resumed_at = time.monotonic()
                self.acked = intervals.merge([*self.acked, (start, end)])
        return None

    def missing(self, client: httpx.Client, in_doubt: tuple[int, int] | None) -> list[tuple[int, int]] | None:
        """What /status says is missing (None: nothing, the upload is assembling or complete).
        Checks that the server holds nothing that was not sent, and counts acknowledged bytes
        it lost."""
        self.resyncs += 1
        if in_doubt is not None:
            time.sleep(0.1)  # a client's back-off before asking again (the service may be failing over)

        def status():
            response = client.get(f"{self.url}/status/{self.file_id}", headers=bearer(self.token))
            return response if response.status_code in (200, 404) else None

        response = wait_until(status, timeout=120, interval=0.1, what=f"/status of {self.file_id}")
        total = len(self.data)
        if response.status_code == 404:  # its creation itself was lost
            missing = [(0, total - 1)]
        else:
            body = response.json()
            if body["state"] in ("assembling", "complete"):
                return None
            missing = [tuple(r) for r in body["missing_ranges"]]
        held = intervals.missing(missing, total)
        allowed = intervals.merge([*self.acked, *([in_doubt] if in_doubt else [])])
        if not _covers(allowed, held):
            self.violations.append(f"holds {held} but only {allowed} were sent")
        lost = intervals.covered_bytes(self.acked) - intervals.covered_bytes(_intersect(self.acked, held))
        self.lost_bytes = max(self.lost_bytes, lost)
        self.acked = _intersect(self.acked, held)  # what it must send again is no longer acknowledged
        return missing


class Clock:
    """When the primary died, and the first 200 to a chunk sent after that."""

    def __init__(self) -> None:
        self.killed_at: float | None = None
        self.first_ok_after_kill: float | None = None
        self.acks = 0
        self.replica_stopped_at: float | None = None
        self.acks_unreplicated = 0  # 200s to chunks sent after the replica's link was cut
        self.lock = threading.Lock()

    def answered(self, sent: float) -> None:
        with self.lock:
            self.acks += 1
            if self.replica_stopped_at is not None and sent > self.replica_stopped_at and self.killed_at is None:
                self.acks_unreplicated += 1
            if self.killed_at is not None and sent > self.killed_at and self.first_ok_after_kill is None:
                self.first_ok_after_kill = time.monotonic()


def _intersect(a, b):
    return intervals.merge((max(s1, s2), min(e1, e2)) for s1, e1 in a for s2, e2 in b if max(s1, s2) <= min(e1, e2))


def _covers(outer, inner) -> bool:
    return intervals.covered_bytes(_intersect(outer, inner)) == intervals.covered_bytes(inner)


def watch_health(url: str, clock: Clock, stop: threading.Event, seen: dict) -> None:
    """Record when /health went red after the kill and when it was green again."""
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            try:
                ok = client.get(f"{url}/health").status_code == 200
            except httpx.TransportError:
                ok = False
            now = time.monotonic()
            if clock.killed_at is not None and now > clock.killed_at:
                if not ok:
                    seen.setdefault("red", now)
                elif "red" in seen:
                    seen.setdefault("green", now)
            stop.wait(0.05)


def test_uploads_complete_byte_identical_across_a_primary_kill(tmp_path, client):
    with (
        running_sentinel_set(tmp_path / "redis") as cluster,
        running_stack(
            tmp_path / "stack",
            cluster.url,
            FT_CLAIM_LEASE=str(CLAIM_LEASE),
            FT_PERSIST_INTERVAL="5",
            FT_ASSEMBLY_LEASE="10",
        ) as stack,
    ):
        beat = Proc(
            workers_command("beat"),
            service_env(stack.data_dir, cluster.url, FT_PERSIST_INTERVAL="5", FT_ASSEMBLY_LEASE="10"),
            stack.log_dir / "beat.log",
        ).start()
        stop_health = threading.Event()
        try:
            clock, health = Clock(), {}
            token = stack.token()
            uploaders = [Uploader(stack.url, token, os.urandom(FILE_BYTES), clock) for _ in range(FILES)]
            threads = [threading.Thread(target=u.run, daemon=True) for u in uploaders]
            health_thread = threading.Thread(
                target=watch_health, args=(stack.url, clock, stop_health, health), daemon=True
            )
            health_thread.start()
            for thread in threads:
                thread.start()
            chunks_per_file = FILE_BYTES // CHUNK_BYTES
            wait_until(lambda: clock.acks >= FILES * chunks_per_file // 4, timeout=120, what="a quarter sent")

            old_primary = cluster.primary_port()
            replica = cluster.servers[cluster.replica_port()]
            # The replica stopped, and its link cut by the primary: what is acknowledged from now
            # on is never replicated (stopping alone is not enough: the kernel would still buffer
            # the stream for it, and it would catch up on waking).
            replica.kill(signal.SIGSTOP)
            try:
                cluster.server(old_primary).client_kill_filter(_type="replica")
                # Only chunks sent from now on count: a 200 arriving now may be for a chunk that
                # was committed, and replicated, before the link was cut.
                clock.replica_stopped_at = stopped_at = time.monotonic()
                wait_until(
                    lambda: clock.acks_unreplicated >= FILES or time.monotonic() - stopped_at > REPLICA_STOP_MAX,
                    timeout=5,
                    interval=0.01,
                    what="acks while the replica is stopped",
                )
                acked_unreplicated = clock.acks_unreplicated
                cluster.servers[old_primary].kill(signal.SIGKILL)
                clock.killed_at = time.monotonic()
            finally:
                replica.kill(signal.SIGCONT)
            assert acked_unreplicated > 0, "inconclusive: nothing was acknowledged while the replica was stopped"

            new_primary = wait_promoted(cluster, old_primary)
            promoted_at = time.monotonic()
            for thread in threads:
                thread.join(timeout=300)
            wait_until(lambda: "green" in health, timeout=60, what="/health green after the failover")

            for uploader in uploaders:
                assert uploader.error is None, repr(uploader.error)
                assert not uploader.violations, uploader.violations
                # Meanwhile: Redis unavailable, or a range still claimed by a chunk cut by the kill.
                assert uploader.refusals <= {(503, "unavailable"), (409, "overlap")}, uploader.refusals
                sha = hashlib.sha256(uploader.data).hexdigest()
                status = wait_for_state(client, stack.url, token, uploader.file_id, timeout=120)
                assert status["state"] == "complete", status
                assert status["sha256"] == sha
                download = client.get(f"{stack.url}/download/{uploader.file_id}", headers=bearer(token))
                assert download.status_code == 200 and download.content == uploader.data
            lost = sum(u.lost_bytes for u in uploaders)
            assert lost > 0, "inconclusive: no acknowledged write was lost with the primary"
            assert new_primary != old_primary

            figures = {
                "chunks acknowledged after the replica was cut off": acked_unreplicated,
                "acknowledged bytes lost and sent again": lost,
                "kill -> replica promoted (s)": round(promoted_at - clock.killed_at, 2),
                "kill -> first 200 to a chunk sent after it (s)": round(clock.first_ok_after_kill - clock.killed_at, 2),
                "kill -> /health green (s)": round(health["green"] - clock.killed_at, 2),
                # An upload whose chunk was in flight at the kill waits for that chunk's claim to
                # lapse on the new primary (FT_CLAIM_LEASE) before its range can be sent again.
                "kill -> each upload moving again (s)": [
                    round(u.resumed_at - clock.killed_at, 2) for u in uploaders if u.resumed_at is not None
                ],
                "resyncs per upload": [u.resyncs for u in uploaders],
                "refusals": sorted(set().union(*(u.refusals for u in uploaders))),
                "claims released once Redis was back": stack.api.log().count("retrying in the background"),
            }
            print("\nRedis failover figures:", figures)
        finally:
            stop_health.set()
            beat.stop()
