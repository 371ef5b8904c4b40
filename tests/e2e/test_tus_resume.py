"""A tus PATCH cut part-way keeps what arrived (CONTRACT 9): tus-js-client sends a whole file
in one PATCH; when its process dies mid-body, or the API does, a new client process resumes
from the server's offset, and the file completes byte-identical."""

from __future__ import annotations

import base64
import json
import os
import signal

from tests.e2e.test_faults import _run_persist
from tests.faults import claims_key, stack_redis
from tests.support import bearer, start_api, wait_until
from tests.tus_support import TUS, check_complete, create, js_config, offset, patch, run_js, start_js, upload_id

MiB = 1024 * 1024


def url_of(log) -> str | None:
    for line in log.read_text().splitlines():
        if '"event":"url"' in line:
            return json.loads(line)["url"]
    return None


def start_slow_single_patch(stack, token, tmp_path, size: int, bytes_per_second: int):
    data = os.urandom(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    log = tmp_path / "node-cut.log"
    proc = start_js(
        js_config(stack, token, path, filename="cut.bin", bytesPerSecond=bytes_per_second, retryDelays=[]), log
    )
    return data, path, log, proc


def kill_group(proc) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def resume(stack, token, path, url, **options) -> int:
    """A new tus-js-client process given the upload URL; returns the bytes it sent."""
    events = run_js(js_config(stack, token, path, uploadUrl=url, filename="cut.bin", **options))
    assert events[-1]["event"] == "success"
    return sum(e["chunkSize"] for e in events if e["event"] == "chunk")


def test_client_killed_mid_patch_resumes_from_what_arrived(stack, client, tmp_path):
    token = stack.token()
    data, path, log, proc = start_slow_single_patch(stack, token, tmp_path, 24 * MiB, 6 * MiB)
    try:
        url = wait_until(lambda: url_of(log), timeout=30, what="the upload URL")
        # The server records a streaming PATCH every FT_TUS_COMMIT_BYTES (8 MiB): wait for that.
        seen = wait_until(lambda: offset(client, url, token), timeout=60, what="the offset to move")
        kill_group(proc)
    finally:
        kill_group(proc)
    r = stack_redis(stack)
    file_id = upload_id(url)
    wait_until(lambda: r.hlen(claims_key(file_id)) == 0, timeout=15, what="the cut PATCH to end on the server")
    cut = offset(client, url, token)
    assert 0 < seen <= cut < len(data)
    resent = resume(stack, token, path, url)
    assert resent == len(data) - cut  # only what had not arrived
    check_complete(client, stack, token, file_id, data, "cut.bin")


def test_api_killed_mid_patch_then_restarted(make_stack, client, tmp_path):
    """SIGKILL of the API while a single PATCH streams: what it recorded (every 1 MiB here)
    survives; the rest is sent again once the dead request's claim lapses (FT_CLAIM_LEASE);
    the worker's CRC re-check passes and the file is byte-identical."""
    env = {"FT_CLAIM_LEASE": "3", "FT_TUS_COMMIT_BYTES": str(MiB)}
    stack = make_stack(**env)
    token = stack.token()
    data, path, log, proc = start_slow_single_patch(stack, token, tmp_path, 16 * MiB, 4 * MiB)
    try:
        url = wait_until(lambda: url_of(log), timeout=30, what="the upload URL")
        seen = wait_until(
            lambda: offset(client, url, token) >= 3 * MiB and offset(client, url, token),
            timeout=60,
            what="3 MiB recorded",
        )
        stack.api.kill()
        stack.api.popen.wait(10)
    finally:
        kill_group(proc)
    stack.api, stack.url = start_api(stack.data_dir, stack.redis_url, stack.log_dir, **env)
    url = f"{stack.url}/files/{upload_id(url)}"
    kept = offset(client, url, token)
    assert seen <= kept < len(data)  # nothing recorded was lost
    resent = resume(stack, token, path, url, retryDelays=[250] * 40)  # 409 until the dead claim lapses
    assert resent == len(data) - kept
    check_complete(client, stack, token, upload_id(url), data, "cut.bin")


def test_redis_loss_restores_a_persisted_tus_upload(make_stack, client):
    """`persist` writes the tus fields (metadata, deferred length) into the manifest: after a
    FLUSHDB, HEAD answers as before and the upload carries on to a complete file."""
    stack = make_stack(FT_PERSIST_AFTER="0")
    token = stack.token()
    data = os.urandom(300 * 1024)
    metadata = "filename " + base64.b64encode("Ünïcode.bin".encode()).decode() + ",flag"
    r = create(client, stack, token, Upload_Defer_Length="1", Upload_Metadata=metadata)
    url = r.headers["Location"]
    assert patch(client, url, token, 0, data[: 100 * 1024]).status_code == 204
    assert upload_id(url) in _run_persist(stack)["persisted"]
    before = client.head(url, headers={**bearer(token), **TUS}).headers

    stack_redis(stack).flushdb()

    after = client.head(url, headers={**bearer(token), **TUS})
    assert after.status_code == 200
    for name in ("Upload-Offset", "Upload-Defer-Length", "Upload-Metadata"):
        assert after.headers[name] == before[name], name
    assert after.headers["Upload-Offset"] == str(100 * 1024)
    assert client.head(url, headers={**bearer(stack.token()), **TUS}).status_code == 404  # still the owner's
    last = patch(client, url, token, 100 * 1024, data[100 * 1024 :], Upload_Length=str(len(data)))
    assert last.status_code == 204, last.text
    check_complete(client, stack, token, upload_id(url), data, "Ünïcode.bin")
