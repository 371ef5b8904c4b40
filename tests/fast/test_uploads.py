"""Chunked uploads, status and delete through the real routers, in-process (fakeredis)."""

from __future__ import annotations

import hashlib
import os
import zlib

from tests.support import chunk_body, send_chunk, wait_for_state, wire_header

URL = ""  # TestClient resolves paths against its own base URL


def test_chunks_out_of_order_complete_the_file_and_it_downloads_identical(client, alice, worker):
    data = os.urandom(300_000)
    pieces = [(100_000, 199_999), (0, 99_999), (200_000, 299_999)]
    answers = [send_chunk(client, URL, alice.token, "fast-1", data, s, e,
                          **{"X_File_SHA256": hashlib.sha256(data).hexdigest()}) for s, e in pieces]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert answers[0].json()["next_expected_byte"] == 0
    assert answers[1].json()["next_expected_byte"] == 200_000
    assert answers[2].json()["state"] == "assembling"
    status = wait_for_state(client, URL, alice.token, "fast-1", timeout=20)
    assert status["state"] == "complete" and status["sha256"] == hashlib.sha256(data).hexdigest()
    download = client.get("/download/fast-1", headers=alice.headers)
    assert download.status_code == 200 and download.content == data
