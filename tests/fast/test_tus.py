"""tus 1.0 on /files/ in-process (fakeredis): create, HEAD, PATCH, DELETE and the errors.

Real tus clients (tuspy, tus-js-client, Uppy) against uvicorn: tests/e2e/test_tus_*.py."""

from __future__ import annotations

import base64
import hashlib
import os
import time

from tests.support import wait_for_state

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


def create(client, account, length: int, name: str = "notes.txt") -> str:
    metadata = f"filename {base64.b64encode(name.encode()).decode()}"
    answer = client.post(
        "/files/", headers={**account.headers, **TUS, "Upload-Length": str(length), "Upload-Metadata": metadata}
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers["tus-resumable"] == "1.0.0" and "upload-expires" in answer.headers
    return answer.headers["location"].rsplit("/", 1)[1]


def patch(client, account, file_id: str, offset: int, body: bytes, **headers: str):
    return client.patch(
        f"/files/{file_id}", content=body, headers={**account.headers, **PATCH, "Upload-Offset": str(offset), **headers}
    )


def test_options_tells_what_the_server_speaks(client, alice):
    answer = client.options("/files/", headers=alice.headers)
    assert answer.status_code == 204
    assert answer.headers["tus-version"] == "1.0.0"
    assert {"creation", "termination", "checksum"} <= set(answer.headers["tus-extension"].split(","))
    assert "sha256" in answer.headers["tus-checksum-algorithm"]


def test_create_head_patch_in_two_parts_completes_the_file(client, alice):
    data = os.urandom(50_000)
    file_id = create(client, alice, len(data))
    head = client.head(f"/files/{file_id}", headers={**alice.headers, **TUS})
    assert head.status_code == 200
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("0", "50000")
    assert head.headers["cache-control"] == "no-store"
    first = patch(client, alice, file_id, 0, data[:20_000])
    assert first.status_code == 204 and first.headers["upload-offset"] == "20000"
    digest = base64.b64encode(hashlib.sha1(data[20_000:]).digest()).decode()
    second = patch(client, alice, file_id, 20_000, data[20_000:], **{"Upload-Checksum": f"sha1 {digest}"})
    assert second.status_code == 204 and second.headers["upload-offset"] == "50000"
    status = wait_for_state(client, "", alice.token, file_id, timeout=20)
    assert status["state"] == "complete" and status["sha256"] == hashlib.sha256(data).hexdigest()
    assert status["file_name"] == "notes.txt"
    assert client.get(f"/files/{file_id}", headers=alice.headers).content == data


def test_patch_errors_keep_the_offset(client, alice, bob):
    file_id = create(client, alice, 1000)
    assert patch(client, alice, file_id, 0, b"a" * 100).status_code == 204
    wrong_offset = patch(client, alice, file_id, 50, b"b" * 10)
    assert (wrong_offset.status_code, wrong_offset.json()["code"]) == (409, "offset_mismatch")
    wrong_type = client.patch(
        f"/files/{file_id}",
        content=b"c",
        headers={**alice.headers, **TUS, "Content-Type": "application/octet-stream", "Upload-Offset": "100"},
    )
    assert wrong_type.status_code == 415
    no_version = client.patch(
        f"/files/{file_id}",
        content=b"c",
        headers={**alice.headers, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "100"},
    )
    assert no_version.status_code == 412 and no_version.headers["tus-version"] == "1.0.0"
    bad_sum = patch(
        client, alice, file_id, 100, b"d" * 10, **{"Upload-Checksum": f"sha1 {base64.b64encode(b'x' * 20).decode()}"}
    )
    assert (bad_sum.status_code, bad_sum.json()["code"]) == (460, "checksum_mismatch")
    too_long = patch(client, alice, file_id, 100, b"e" * 1000)
    assert too_long.status_code == 413
    assert patch(client, bob, file_id, 100, b"f").status_code == 404
    head = client.head(f"/files/{file_id}", headers={**alice.headers, **TUS})
    assert head.headers["upload-offset"] == "100"


def test_delete_terminates_and_the_upload_is_gone(client, alice):
    file_id = create(client, alice, 1000)
    assert patch(client, alice, file_id, 0, b"a" * 10).status_code == 204
    assert client.delete(f"/files/{file_id}", headers={**alice.headers, **TUS}).status_code == 204
    assert client.head(f"/files/{file_id}", headers={**alice.headers, **TUS}).status_code == 404
    assert client.get(f"/status/{file_id}", headers=alice.headers).status_code == 404


def test_a_failed_patch_whose_release_meets_no_redis_is_released_in_the_background(client, alice):
    """As a chunk's: a PATCH that fails while Redis is away (a failover) leaves its claim to a
    background retry, so the client's resume is not refused (409) for the whole claim lease."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    repo = client.app.state.uploads.repo
    real_release, failures = repo.release, []

    async def release_once_unreachable(file_id: str, token: str):
        if not failures:
            failures.append(token)
            raise RedisConnectionError("Redis is failing over")
        return await real_release(file_id, token)

    repo.release = release_once_unreachable
    data = os.urandom(30_000)
    file_id = create(client, alice, len(data))
    wrong = base64.b64encode(hashlib.sha1(b"other bytes").digest()).decode()
    refused = patch(client, alice, file_id, 0, data, **{"Upload-Checksum": f"sha1 {wrong}"})
    assert refused.status_code == 460 and failures  # its release met no Redis
    deadline = time.monotonic() + 10  # the claim lease is 60 s: only the background retry frees it sooner
    while (resumed := patch(client, alice, file_id, 0, data)).status_code == 409 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resumed.status_code == 204, resumed.text
    assert resumed.headers["upload-offset"] == str(len(data))
