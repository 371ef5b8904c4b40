"""256 devices at once, each on its own keep-alive connection, each uploading 1 MiB in 64 KiB
chunks (bench/devices.py's devices): load one machine can carry queues, it does not fail.
No timing is asserted here (figures are bench/devices.py's): only that nothing failed."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import uvloop

from bench.devices import FILE_SIZE, OurChunks, Payload, run_devices
from tests.support import bearer, wait_until

DEVICES = 256


@pytest.mark.slow
def test_256_devices_at_once_all_complete_without_an_error(make_stack):
    stack = make_stack()
    token = stack.token()
    payload = Payload()
    row = uvloop.run(run_devices(stack.url, OurChunks(token), DEVICES, payload, "many", deadline=600))
    assert row["errors"] == {}, row["error_samples"]
    assert row["completed"] == DEVICES
    assert row["requests"] == DEVICES * FILE_SIZE // (64 * 1024)  # one per chunk: all of them answered

    sha256 = hashlib.sha256(payload.data).hexdigest()
    pending = {f"many-{i}" for i in range(DEVICES)}
    with httpx.Client(base_url=stack.url, headers=bearer(token), timeout=60) as client:

        def all_complete():
            for file_id in list(pending):
                status = client.get(f"/status/{file_id}").json()
                assert status["state"] != "failed", status
                if status["state"] == "complete":
                    assert status["sha256"] == sha256
                    pending.discard(file_id)
            return not pending

        wait_until(all_complete, timeout=600, interval=0.5, what=f"{DEVICES} files to be complete")
