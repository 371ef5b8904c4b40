"""Bytes that change on disk after they were acknowledged: the worker's CRC re-check catches them.

A chunk is CRC-checked when it arrives; the worker checks every stored chunk again while it
assembles. A byte flipped in the staging file behind the API's back must end the upload
`failed`, never `complete` with wrong bytes.
"""

from __future__ import annotations

import os

import pytest

from tests.support import bearer, new_id, send_chunk, wait_for_state

KiB = 1024
CHUNK = 256 * KiB
SIZE = 5 * CHUNK + 777


@pytest.mark.parametrize("position", [0, 2 * CHUNK + 12345, SIZE - 1], ids=["first", "middle", "last"])
def test_byte_flipped_in_staging_ends_failed_not_complete(stack, client, position):
    token = stack.token()
    data = os.urandom(SIZE)
    file_id = new_id("flip")
    ranges = [(s, min(s + CHUNK, SIZE) - 1) for s in range(0, SIZE, CHUNK)]
    # The chunk holding `position` is stored first, the last missing one is sent after the damage.
    damaged = next(r for r in ranges if r[0] <= position <= r[1])
    last = ranges[0] if damaged != ranges[0] else ranges[1]
    for start, end in [r for r in ranges if r != last]:
        assert send_chunk(client, stack.url, token, file_id, data, start, end).status_code == 200

    staging = stack.data_dir / "staging" / file_id / "data"
    with open(staging, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x40]))

    assert send_chunk(client, stack.url, token, file_id, data, *last).status_code == 200
    status = wait_for_state(client, stack.url, token, file_id)
    assert status["state"] == "failed", status
    assert f"stored bytes {damaged[0]}-{damaged[1]}" in status["error"]
    assert "sha256" not in status or status["sha256"] is None
    assert not (stack.data_dir / "files" / file_id / "data").exists()
    download = client.get(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert download.status_code == 409 and download.json()["code"] == "not_complete"
