"""Off-the-shelf resumable-upload clients against the real stack (CONTRACT 9): tus-js-client
under Node in tus 1.0 and both IETF drafts it speaks, and tuspy. Every file must end
`complete`, verified by a worker, and download byte-identical under its own name."""

from __future__ import annotations

import pytest
from tusclient import client as tus_client

from tests.support import bearer
from tests.tus_support import check_complete, js_round_trip, sample, upload_id

MiB = 1024 * 1024


@pytest.mark.parametrize("protocol", ["tus-v1", "ietf-draft-03", "ietf-draft-05"])
@pytest.mark.parametrize("chunk_size", [None, 1 * MiB], ids=["one-patch", "1MiB-patches"])
def test_tus_js_client_uploads(stack, client, tmp_path, protocol, chunk_size):
    size = 5 * MiB + 321
    events = js_round_trip(stack, client, tmp_path, size, f"js-{protocol}.bin", protocol=protocol, chunkSize=chunk_size)
    chunks = [e for e in events if e["event"] == "chunk"]
    assert sum(e["chunkSize"] for e in chunks) == size
    assert len(chunks) == (1 if chunk_size is None else 6)


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha1-checksum"])
def test_tuspy_uploads(stack, client, tmp_path, checksum):
    token = stack.token()
    path, data = sample(tmp_path, 4 * MiB + 77)
    tus = tus_client.TusClient(f"{stack.url}/files/", headers=bearer(token))
    # tuspy opens a path and never closes it: hand it a stream this test closes.
    with open(path, "rb") as stream:
        uploader = tus.uploader(
            file_stream=stream, chunk_size=MiB, metadata={"filename": "tuspy é.bin"}, upload_checksum=checksum
        )
        uploader.upload()
    assert uploader.offset == len(data)
    check_complete(client, stack, token, upload_id(uploader.url), data, "tuspy é.bin")
