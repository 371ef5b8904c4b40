"""Chunked uploads, status and delete through the real routers, in-process (fakeredis).

The same requests against uvicorn, a real Redis and a Celery worker: tests/e2e/test_upload.py.
"""

from __future__ import annotations

import hashlib
import os
import zlib

import pytest

from tests.support import bearer, chunk_body, send_chunk, wait_for_state

URL = ""  # TestClient resolves paths against its own base URL


def post_body(client, token: str, file_id: str, body: bytes, content_range: str, **headers: str):
    return client.post(
        f"/upload/{file_id}",
        content=body,
        headers={
            **bearer(token),
            "Content-Range": content_range,
            "Content-Type": "application/octet-stream",
            **headers,
        },
    )


def test_chunks_out_of_order_complete_the_file_and_it_downloads_identical(client, alice):
    data = os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    pieces = [(100_000, 199_999), (0, 99_999), (200_000, 299_999)]
    answers = [
        send_chunk(
            client, URL, alice.token, "fast-1", data, s, e, X_File_SHA256=digest, X_File_Name="r%C3%A9sum%C3%A9.bin"
        )
        for s, e in pieces
    ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [a.json()["next_expected_byte"] for a in answers] == [0, 200_000, 300_000]
    assert [a.json()["received_bytes"] for a in answers] == [100_000, 200_000, 300_000]
    assert answers[2].json()["state"] == "assembling"
    status = wait_for_state(client, URL, alice.token, "fast-1", timeout=20)
    assert status["state"] == "complete" and status["sha256"] == digest
    assert status["file_name"] == "résumé.bin" and status["missing_ranges"] == []
    download = client.get("/download/fast-1", headers=alice.headers)
    assert download.status_code == 200 and download.content == data
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9.bin" in download.headers["content-disposition"]
    late = send_chunk(client, URL, alice.token, "fast-1", data, 0, 99_999)
    assert (late.status_code, late.json()["code"]) == (409, "already_complete")


def test_status_lists_the_missing_ranges_and_a_retransmission_is_acknowledged(client, alice):
    data = os.urandom(1000)
    first = send_chunk(client, URL, alice.token, "gaps", data, 200, 399)
    assert first.status_code == 200
    status = client.get("/status/gaps", headers=alice.headers).json()
    assert (status["state"], status["received_bytes"], status["total_bytes"]) == ("uploading", 200, 1000)
    assert status["missing_ranges"] == [[0, 199], [400, 999]] and status["next_expected_byte"] == 0
    again = send_chunk(client, URL, alice.token, "gaps", data, 200, 399)
    assert again.status_code == 200 and again.json()["received_bytes"] == 200
    assert client.get("/status/gaps", headers=alice.headers).json()["missing_ranges"] == [[0, 199], [400, 999]]


def test_an_overlap_is_409_with_where_to_continue_and_changes_nothing(client, alice):
    data = os.urandom(1000)
    assert send_chunk(client, URL, alice.token, "ov", data, 0, 499).status_code == 200
    overlap = send_chunk(client, URL, alice.token, "ov", data, 400, 599)
    assert overlap.status_code == 409
    assert overlap.json()["code"] == "overlap" and overlap.json()["next_expected_byte"] == 500
    total = send_chunk(client, URL, alice.token, "ov", data, 500, 599, total=2000)
    assert (total.status_code, total.json()["code"]) == (409, "total_mismatch")
    assert client.get("/status/ov", headers=alice.headers).json()["received_bytes"] == 500


@pytest.mark.parametrize(
    ("make_body", "content_range", "code"),
    [
        (lambda p: chunk_body(p, 0, crc=zlib.crc32(p) ^ 1), "bytes 0-99/1000", "checksum_mismatch"),
        (lambda p: chunk_body(p[:90], 0, end=99), "bytes 0-99/1000", "length_mismatch"),
        (lambda p: chunk_body(p + b"x", 0, end=99), "bytes 0-99/1000", "length_mismatch"),
        (lambda p: chunk_body(p, 1), "bytes 0-99/1000", "invalid_chunk_header"),
        (lambda p: b"short", "bytes 0-99/1000", "length_mismatch"),
        (lambda p: chunk_body(p, 0), "bytes 0-99", "invalid_content_range"),
        (lambda p: chunk_body(p, 0), "bytes 99-0/1000", "invalid_content_range"),
    ],
)
def test_a_bad_chunk_is_400_and_nothing_of_it_is_kept(client, alice, make_body, content_range, code):
    payload = os.urandom(100)
    answer = post_body(client, alice.token, "bad", make_body(payload), content_range)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code and answer.json()["detail"]
    assert client.get("/status/bad", headers=alice.headers).status_code == 404  # never created


def test_a_bad_chunk_in_an_upload_leaves_the_received_bytes_alone(client, alice, settings):
    data = os.urandom(200)
    assert send_chunk(client, URL, alice.token, "keep", data, 0, 99).status_code == 200
    bad = post_body(client, alice.token, "keep", chunk_body(data[100:], 100, crc=0), "bytes 100-199/200")
    assert (bad.status_code, bad.json()["code"]) == (400, "checksum_mismatch")
    assert client.get("/status/keep", headers=alice.headers).json()["missing_ranges"] == [[100, 199]]
    assert send_chunk(client, URL, alice.token, "keep", data, 100, 199).status_code == 200
    assert wait_for_state(client, URL, alice.token, "keep", timeout=20)["state"] == "complete"
    assert (settings.files_dir / "keep" / "data").read_bytes() == data


def test_limits_and_ids_are_checked_before_anything_is_stored(make_client, alice):
    small = make_client(max_chunk_bytes=64, max_file_bytes=10_000)
    data = os.urandom(1000)
    too_big = send_chunk(small, URL, alice.token, "big", data, 0, 99)
    assert too_big.status_code == 413 and too_big.json()["code"] == "chunk_too_large"
    too_long = send_chunk(small, URL, alice.token, "big", data, 0, 9, total=20_000)
    assert too_long.status_code == 413 and too_long.json()["code"] == "file_too_large"
    bad_id = send_chunk(small, URL, alice.token, ".hidden", data, 0, 9)
    assert bad_id.status_code == 400 and bad_id.json()["code"] == "invalid_file_id"


def test_another_users_upload_does_not_exist_for_them_but_does_for_an_admin(client, alice, bob, admin):
    data = os.urandom(100)
    assert send_chunk(client, URL, alice.token, "mine", data, 0, 49).status_code == 200
    for answer in (
        client.get("/status/mine", headers=bob.headers),
        send_chunk(client, URL, bob.token, "mine", data, 50, 99),
        client.delete("/upload/mine", headers=bob.headers),
    ):
        assert (answer.status_code, answer.json()["code"]) == (404, "not_found")
    assert client.get("/status/mine", headers=admin.headers).json()["received_bytes"] == 50


def test_delete_cancels_an_upload_and_removes_a_file(client, alice, settings):
    data = os.urandom(100)
    assert send_chunk(client, URL, alice.token, "gone", data, 0, 49).status_code == 200
    assert client.delete("/upload/gone", headers=alice.headers).status_code == 204
    assert client.get("/status/gone", headers=alice.headers).status_code == 404
    assert not (settings.staging_dir / "gone").exists()
    assert send_chunk(client, URL, alice.token, "done", data, 0, 99).status_code == 200
    wait_for_state(client, URL, alice.token, "done", timeout=20)
    assert client.delete("/upload/done", headers=alice.headers).status_code == 204
    assert client.get("/download/done", headers=alice.headers).status_code == 404
    assert not (settings.files_dir / "done").exists()
    assert client.delete("/upload/done", headers=alice.headers).status_code == 404
