"""A tus PATCH cut part-way keeps what arrived (CONTRACT 9): tus-js-client sends a whole file
in one PATCH; when its process dies mid-body, or the API does, a new client process resumes
from the server's offset, and the file completes byte-identical."""

from __future__ import annotations

import json
import os
import signal

from tests.faults import claims_key, stack_redis
from tests.support import start_api, wait_until
from tests.tus_support import check_complete, js_config, offset, run_js, start_js, upload_id

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
    proc = start_js(js_config(stack, token, path, filename="cut.bin", bytesPerSecond=bytes_per_second,
                              retryDelays=[]), log)
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
        seen = wait_until(lambda: offset(client, url, token) >= 3 * MiB and offset(client, url, token),
                          timeout=60, what="3 MiB recorded")
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
