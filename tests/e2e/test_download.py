"""CONTRACT 6 through the real app: who may download, and real clients resuming and splitting."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid

import httpx
import pytest

from tests.support import bearer, require_tool, send_chunk, wait_for_state

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def uploaded(stack):
    """A complete 6 MiB file with a non-ASCII original name, and its owner's token."""
    token = stack.token()
    data = os.urandom(6 * MiB + 333)
    file_id = f"dl-{uuid.uuid4().hex[:10]}"
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(data), 2 * MiB):
            end = min(start + 2 * MiB, len(data)) - 1
            r = send_chunk(
                client, stack.url, token, file_id, data, start, end, X_File_Name="na%C3%AFve%20report%22%3B.pdf"
            )
            assert r.status_code == 200
        assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    return file_id, data, token


def test_full_download_and_headers(stack, uploaded):
    file_id, data, token = uploaded
    r = httpx.get(f"{stack.url}/download/{file_id}", headers=bearer(token), timeout=60)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert "last-modified" in r.headers
    disposition = r.headers["content-disposition"]
    assert "filename*=UTF-8''na%C3%AFve%20report%22%3B.pdf" in disposition
    assert "\r" not in disposition and "\n" not in disposition


def test_head_has_headers_and_no_body(stack, uploaded):
    file_id, data, token = uploaded
    r = httpx.head(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(data)
    assert r.content == b""


def test_single_range_and_conditionals(stack, uploaded):
    file_id, data, token = uploaded
    url = f"{stack.url}/download/{file_id}"
    r = httpx.get(url, headers={**bearer(token), "Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(data)}"
    etag = r.headers["etag"]
    assert httpx.get(url, headers={**bearer(token), "If-None-Match": etag}).status_code == 304
    assert httpx.get(url, headers={**bearer(token), "If-Match": '"other"'}).status_code == 412
    stale = httpx.get(url, headers={**bearer(token), "Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == data
    fresh = httpx.get(url, headers={**bearer(token), "Range": "bytes=0-9", "If-Range": etag})
    assert fresh.status_code == 206 and fresh.content == data[:10]
    r = httpx.get(url, headers={**bearer(token), "Range": f"bytes={len(data)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(data)}"


def test_other_user_gets_404_and_incomplete_gets_409(stack, uploaded):
    file_id, data, token = uploaded
    other = stack.token()
    r = httpx.get(f"{stack.url}/download/{file_id}", headers=bearer(other))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert httpx.head(f"{stack.url}/download/{file_id}", headers=bearer(other)).status_code == 404
    partial = f"part-{uuid.uuid4().hex[:8]}"
    with httpx.Client() as client:
        send_chunk(client, stack.url, token, partial, data[:1000], 0, 9, total=1000)
    r = httpx.get(f"{stack.url}/download/{partial}", headers=bearer(token))
    assert r.status_code == 409 and r.json()["code"] == "not_complete"
    assert httpx.get(f"{stack.url}/download/{file_id}").status_code == 401


def _need(tool: str) -> str:
    return require_tool(tool)


def test_wget_resumes_a_half_download(stack, uploaded, tmp_path):
    file_id, data, token = uploaded
    target = tmp_path / "out.bin"
    target.write_bytes(data[: len(data) // 2])
    subprocess.run(
        [
            _need("wget"),
            "-q",
            "-c",
            "--header",
            f"Authorization: Bearer {token}",
            "-O",
            str(target),
            f"{stack.url}/download/{file_id}",
        ],
        check=True,
        timeout=60,
    )
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_curl_resumes_a_half_download(stack, uploaded, tmp_path):
    file_id, data, token = uploaded
    target = tmp_path / "out.bin"
    target.write_bytes(data[: len(data) // 3])
    subprocess.run(
        [
            _need("curl"),
            "-sS",
            "-f",
            "-C",
            "-",
            "-H",
            f"Authorization: Bearer {token}",
            "-o",
            str(target),
            f"{stack.url}/download/{file_id}",
        ],
        check=True,
        timeout=60,
    )
    assert target.read_bytes() == data


def test_aria2c_splits_into_parallel_ranges(stack, uploaded, tmp_path):
    file_id, data, token = uploaded
    subprocess.run(
        [
            _need("aria2c"),
            "-q",
            "-x8",
            "-s8",
            "--min-split-size=1M",
            "--allow-overwrite=true",
            f"--header=Authorization: Bearer {token}",
            "-d",
            str(tmp_path),
            "-o",
            "out.bin",
            f"{stack.url}/download/{file_id}",
        ],
        check=True,
        timeout=60,
    )
    assert (tmp_path / "out.bin").read_bytes() == data
