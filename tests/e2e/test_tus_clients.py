"""Off-the-shelf resumable-upload clients against the real stack (CONTRACT 9): tus-js-client
under Node in tus 1.0 and both IETF drafts it speaks, and tuspy. Every file must end
`complete`, verified by a worker, and download byte-identical under its own name."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from tusclient import client as tus_client

from tests.support import bearer, wait_for_state
from tests.tus_support import js_config, run_js, upload_id

MiB = 1024 * 1024


def check_complete(client, stack, token: str, file_id: str, data: bytes, name: str) -> None:
    done = wait_for_state(client, stack.url, token, file_id)
    assert done["state"] == "complete", done
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["file_name"] == name
    got = client.get(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert got.status_code == 200
    assert got.content == data
    assert f"filename*=UTF-8''{quote(name)}" in got.headers["content-disposition"]


def sample(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-03", "ietf-draft-05"])
@pytest.mark.parametrize("chunk_size", [None, 1 * MiB], ids=["one-patch", "1MiB-patches"])
def test_tus_js_client_uploads(stack, client, tmp_path, protocol, chunk_size):
    token = stack.token()
    path, data = sample(tmp_path, 5 * MiB + 321)
    name = f"js-{protocol}.bin"
    events = run_js(js_config(stack, token, path, protocol=protocol, chunkSize=chunk_size, filename=name))
    success = events[-1]
    assert success["event"] == "success"
    chunks = [e for e in events if e["event"] == "chunk"]
    assert sum(e["chunkSize"] for e in chunks) == len(data)
    assert len(chunks) == (1 if chunk_size is None else 6)
    check_complete(client, stack, token, upload_id(success["url"]), data, name)


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha1-checksum"])
def test_tuspy_uploads(stack, client, tmp_path, checksum):
    token = stack.token()
    path, data = sample(tmp_path, 4 * MiB + 77)
    tus = tus_client.TusClient(f"{stack.url}/files/", headers=bearer(token))
    uploader = tus.uploader(str(path), chunk_size=MiB, metadata={"filename": "tuspy é.bin"}, upload_checksum=checksum)
    uploader.upload()
    assert uploader.offset == len(data)
    check_complete(client, stack, token, upload_id(uploader.url), data, "tuspy é.bin")
