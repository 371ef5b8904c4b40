"""GET /health follows the workers: a stopped worker stops being counted at once."""

from __future__ import annotations

import httpx

from core.workers_registry import HEARTBEAT_TTL
from tests.support import wait_until


def test_stopped_worker_leaves_health_before_its_heartbeat_expires(make_stack):
    stack = make_stack()
    assert httpx.get(f"{stack.url}/health").json() == {"redis": "ok", "workers": 1}
    stack.worker.stop()
    # Well inside the heartbeat TTL: only an explicit goodbye can make it this fast.
    response = wait_until(
        lambda: (r := httpx.get(f"{stack.url}/health")).status_code == 503 and r,
        timeout=HEARTBEAT_TTL / 3,
        what="health to drop the stopped worker",
    )
    body = response.json()
    assert body["redis"] == "ok" and body["workers"] == 0
