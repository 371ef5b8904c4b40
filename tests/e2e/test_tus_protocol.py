"""The tus answers of CONTRACT 9, one by one, over real HTTP: status codes, headers, the JSON
error body, and that a refused request changes nothing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from datetime import datetime
from email.utils import parsedate_to_datetime

import pytest

from tests.faults import stack_redis
from tests.support import bearer, wait_for_state, wait_until
from tests.tus_support import PATCH_TYPE, TUS, create, js_round_trip, offset, patch, upload_id

KiB = 1024


def assert_tus_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["content-type"].startswith("application/json")
    if response.request.method != "HEAD":
        body = response.json()
        assert body["code"] == code and body["detail"], body


def new_upload(client, stack, token, length: int, **headers) -> str:
    r = create(client, stack, token, length, **headers)
    assert r.status_code == 201, r.text
    assert r.headers["Tus-Resumable"] == "1.0.0"
    return r.headers["Location"]


def test_options_lists_versions_extensions_and_checksums(stack, client):
    r = client.options(f"{stack.url}/files/", headers=bearer(stack.token()))
    assert r.status_code == 204
    assert r.headers["Tus-Version"] == "1.0.0" and r.headers["Tus-Resumable"] == "1.0.0"
    extensions = set(r.headers["Tus-Extension"].split(","))
    assert {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    } <= extensions
    assert int(r.headers["Tus-Max-Size"]) == 1024**4
    assert {"sha1", "md5", "crc32", "sha256"} <= set(r.headers["Tus-Checksum-Algorithm"].split(","))


def test_create_then_head_reports_offset_length_metadata_and_expiry(stack, client):
    token = stack.token()
    name = "r\u00e9sum\u00e9.pdf"
    metadata = f"filename {base64.b64encode(name.encode()).decode()},is_confidential"
    url = new_upload(client, stack, token, 1000, Upload_Metadata=metadata)
    assert url.startswith(f"{stack.url}/files/")
    r = client.head(url, headers={**bearer(token), **TUS})
    assert r.status_code == 200
    assert r.headers["Upload-Offset"] == "0" and r.headers["Upload-Length"] == "1000"
    assert r.headers["Upload-Metadata"] == metadata
    assert r.headers["Cache-Control"] == "no-store"
    expires = parsedate_to_datetime(r.headers["Upload-Expires"])
    status = client.get(f"{stack.url}/status/{upload_id(url)}", headers=bearer(token)).json()
    assert status["file_name"] == name and status["state"] == "uploading"
    assert (
        abs(expires.timestamp() - datetime.fromisoformat(status["expires_at"].replace("Z", "+00:00")).timestamp()) < 2
    )


@pytest.mark.parametrize("metadata", ["", "flag", "a,b"], ids=["empty", "key-only", "two-keys"])
def test_empty_metadata_and_keys_without_values_are_accepted(stack, client, metadata):
    token = stack.token()
    url = new_upload(client, stack, token, 10, Upload_Metadata=metadata)
    assert patch(client, url, token, 0, b"0123456789").status_code == 204
    done = wait_for_state(client, stack.url, token, upload_id(url))
    assert done["state"] == "complete" and done["file_name"] is None


@pytest.mark.parametrize(
    "metadata", ["filename !!notbase64", "a b c", ",x"], ids=["bad-base64", "three-parts", "empty-key"]
)
def test_malformed_metadata_is_refused(stack, client, metadata):
    token = stack.token()
    r = create(client, stack, token, 10, Upload_Metadata=metadata)
    assert_tus_error(r, 400, "invalid_tus_header")


def test_patch_appends_and_the_file_completes(stack, client):
    token = stack.token()
    data = os.urandom(300 * KiB)
    url = new_upload(client, stack, token, len(data))
    first = patch(client, url, token, 0, data[: 100 * KiB])
    assert first.status_code == 204 and first.headers["Upload-Offset"] == str(100 * KiB)
    assert first.headers["Tus-Resumable"] == "1.0.0" and "Upload-Expires" in first.headers
    last = patch(client, url, token, 100 * KiB, data[100 * KiB :])
    assert last.headers["Upload-Offset"] == str(len(data))
    done = wait_for_state(client, stack.url, token, upload_id(url))
    assert done["state"] == "complete" and done["sha256"] == hashlib.sha256(data).hexdigest()
    assert offset(client, url, token) == len(data)


def test_wrong_offset_is_409_and_changes_nothing(stack, client):
    token = stack.token()
    url = new_upload(client, stack, token, 100)
    assert patch(client, url, token, 0, b"x" * 40).status_code == 204
    for wrong in (0, 39, 41, 100):
        r = patch(client, url, token, wrong, b"y" * 10)
        assert_tus_error(r, 409, "offset_mismatch")
        assert r.json()["upload_offset"] == 40
    assert offset(client, url, token) == 40


@pytest.mark.parametrize("version", [None, "0.2.2", "2.0.0"], ids=["missing", "old", "future"])
def test_missing_or_unsupported_tus_resumable_is_412_with_tus_version(stack, client, version):
    token = stack.token()
    url = new_upload(client, stack, token, 100)
    headers = {**bearer(token), **PATCH_TYPE, "Upload-Offset": "0"}
    if version:
        headers["Tus-Resumable"] = version
    for r in (
        client.patch(url, content=b"abc", headers=headers),
        client.head(url, headers=headers),
        client.post(f"{stack.url}/files/", headers={**headers, "Upload-Length": "5"}),
    ):
        assert_tus_error(r, 412, "unsupported_tus_version")
        assert r.headers["Tus-Version"] == "1.0.0"
    assert offset(client, url, token) == 0


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain"])
def test_patch_without_the_tus_content_type_is_415(stack, client, content_type):
    token = stack.token()
    url = new_upload(client, stack, token, 100)
    headers = {**bearer(token), **TUS, "Upload-Offset": "0"}
    if content_type:
        headers["Content-Type"] = content_type
    assert_tus_error(client.patch(url, content=b"abc", headers=headers), 415, "unsupported_media_type")
    assert offset(client, url, token) == 0


def checksum_header(algorithm: str, body: bytes) -> str:
    digest = zlib.crc32(body).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, body).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "crc32", "sha256"])
def test_checksum_match_is_kept_and_mismatch_is_460_and_kept_nothing(stack, client, algorithm):
    token = stack.token()
    data = os.urandom(200 * KiB)
    url = new_upload(client, stack, token, len(data))
    good = patch(client, url, token, 0, data[: 50 * KiB], Upload_Checksum=checksum_header(algorithm, data[: 50 * KiB]))
    assert good.status_code == 204 and good.headers["Upload-Offset"] == str(50 * KiB)
    body = data[50 * KiB :]
    bad = patch(client, url, token, 50 * KiB, body, Upload_Checksum=checksum_header(algorithm, body[:-1] + b"!"))
    assert_tus_error(bad, 460, "checksum_mismatch")
    assert offset(client, url, token) == 50 * KiB  # nothing of that PATCH kept
    again = patch(client, url, token, 50 * KiB, body, Upload_Checksum=checksum_header(algorithm, body))
    assert again.status_code == 204
    done = wait_for_state(client, stack.url, token, upload_id(url))
    assert done["state"] == "complete" and done["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "value,code",
    [
        ("sha3 AAAA", "unsupported_checksum_algorithm"),
        ("sha1", "invalid_tus_header"),
        ("sha1 %%%", "invalid_tus_header"),
        ("md5 AAAA", "invalid_tus_header"),
    ],
)
def test_malformed_checksum_header_is_400(stack, client, value, code):
    token = stack.token()
    url = new_upload(client, stack, token, 10)
    assert_tus_error(patch(client, url, token, 0, b"0123456789", Upload_Checksum=value), 400, code)
    assert offset(client, url, token) == 0


def test_another_users_upload_does_not_exist_for_them(stack, client):
    owner = stack.token()
    url = new_upload(client, stack, owner, 10)
    stranger = stack.token()
    assert_tus_error(client.head(url, headers={**bearer(stranger), **TUS}), 404, "not_found")
    assert_tus_error(patch(client, url, stranger, 0, b"0123456789"), 404, "not_found")
    assert_tus_error(client.delete(url, headers={**bearer(stranger), **TUS}), 404, "not_found")
    assert offset(client, url, owner) == 0
    assert offset(client, url, stack.token("admin")) == 0  # admins see every upload


def test_without_a_token_every_route_is_401(stack, client):
    url = new_upload(client, stack, stack.token(), 10)
    for r in (
        client.post(f"{stack.url}/files/", headers={**TUS, "Upload-Length": "5"}),
        client.head(url, headers=TUS),
        client.options(f"{stack.url}/files/"),
        client.patch(url, content=b"abc", headers={**TUS, **PATCH_TYPE, "Upload-Offset": "0"}),
        client.delete(url, headers=TUS),
    ):
        assert_tus_error(r, 401, "not_authenticated")
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_answers_of_the_app_itself_carry_tus_resumable_too(stack, client):
    url = new_upload(client, stack, stack.token(), 10)
    wrong_method = client.put(url, headers={**bearer(stack.token()), **TUS})
    assert_tus_error(wrong_method, 405, "method_not_allowed")
    assert wrong_method.headers["Cache-Control"] == "no-store"


def test_termination_is_204_then_404_and_the_bytes_are_gone(stack, client):
    token = stack.token()
    url = new_upload(client, stack, token, 100)
    assert patch(client, url, token, 0, b"z" * 60).status_code == 204
    staged = stack.data_dir / "staging" / upload_id(url)
    assert staged.exists()
    r = client.delete(url, headers={**bearer(token), **TUS})
    assert r.status_code == 204 and r.headers["Tus-Resumable"] == "1.0.0"
    assert_tus_error(client.head(url, headers={**bearer(token), **TUS}), 404, "not_found")
    assert_tus_error(patch(client, url, token, 60, b"z" * 40), 404, "not_found")
    assert_tus_error(client.delete(url, headers={**bearer(token), **TUS}), 404, "not_found")
    assert not staged.exists()


def test_x_http_method_override_turns_a_post_into_patch_head_and_delete(stack, client):
    token = stack.token()
    url = new_upload(client, stack, token, 8)
    as_patch = client.post(
        url,
        content=b"abcd",
        headers={**bearer(token), **TUS, **PATCH_TYPE, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert as_patch.status_code == 204 and as_patch.headers["Upload-Offset"] == "4"
    as_head = client.post(url, headers={**bearer(token), **TUS, "X-HTTP-Method-Override": "HEAD"})
    assert as_head.status_code == 200 and as_head.headers["Upload-Offset"] == "4"
    as_delete = client.post(url, headers={**bearer(token), **TUS, "X-HTTP-Method-Override": "DELETE"})
    assert as_delete.status_code == 204
    assert_tus_error(client.head(url, headers={**bearer(token), **TUS}), 404, "not_found")


def test_tus_js_client_with_method_override(stack, client, tmp_path):
    js_round_trip(stack, client, tmp_path, 700 * KiB, "o.bin", overridePatchMethod=True, chunkSize=256 * KiB)


def test_creation_with_upload_and_an_empty_file(stack, client):
    token = stack.token()
    data = os.urandom(64 * KiB)
    r = client.post(
        f"{stack.url}/files/",
        content=data[: 10 * KiB],
        headers={**bearer(token), **TUS, **PATCH_TYPE, "Upload-Length": str(len(data))},
    )
    assert r.status_code == 201 and r.headers["Upload-Offset"] == str(10 * KiB)
    assert patch(client, r.headers["Location"], token, 10 * KiB, data[10 * KiB :]).status_code == 204
    done = wait_for_state(client, stack.url, token, upload_id(r.headers["Location"]))
    assert done["sha256"] == hashlib.sha256(data).hexdigest()

    empty = new_upload(client, stack, token, 0, Upload_Metadata=f"filename {base64.b64encode(b'empty.txt').decode()}")
    done = wait_for_state(client, stack.url, token, upload_id(empty))
    assert done["state"] == "complete" and done["sha256"] == hashlib.sha256(b"").hexdigest()
    got = client.get(f"{stack.url}/download/{upload_id(empty)}", headers=bearer(token))
    assert got.status_code == 200 and got.content == b""


@pytest.mark.parametrize(
    "headers,status,code",
    [
        ({}, 400, "invalid_tus_header"),
        ({"Upload-Length": "-1"}, 400, "invalid_tus_header"),
        ({"Upload-Length": "abc"}, 400, "invalid_tus_header"),
        ({"Upload-Length": "10", "Upload-Defer-Length": "1"}, 400, "invalid_tus_header"),
        ({"Upload-Defer-Length": "2"}, 400, "invalid_tus_header"),
        ({"Upload-Length": str(2 * 1024**4)}, 413, "file_too_large"),
        ({"Upload-Length": "10", "Upload-Concat": "whole"}, 400, "invalid_tus_header"),
        ({"Upload-Concat": "final;/files/nosuchupload"}, 400, "invalid_concatenation"),
    ],
)
def test_bad_creation_headers(stack, client, headers, status, code):
    r = client.post(f"{stack.url}/files/", headers={**bearer(stack.token()), **TUS, **headers})
    assert_tus_error(r, status, code)


def test_body_past_the_length_is_413_and_kept_nothing(stack, client):
    token = stack.token()
    url = new_upload(client, stack, token, 10)
    assert_tus_error(patch(client, url, token, 0, b"x" * 11), 413, "upload_length_exceeded")
    assert offset(client, url, token) == 0


def test_deferred_length(stack, client):
    token = stack.token()
    data = os.urandom(90 * KiB)
    r = create(client, stack, token, Upload_Defer_Length="1")
    assert r.status_code == 201
    url = r.headers["Location"]
    assert patch(client, url, token, 0, data[: 40 * KiB]).status_code == 204
    head = client.head(url, headers={**bearer(token), **TUS})
    assert head.headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in head.headers
    status = client.get(f"{stack.url}/status/{upload_id(url)}", headers=bearer(token)).json()
    assert status["state"] == "uploading" and status["total_bytes"] is None
    assert status["received_bytes"] == status["next_expected_byte"] == 40 * KiB
    assert_tus_error(patch(client, url, token, 40 * KiB, b"", Upload_Length=str(10 * KiB)), 400, "invalid_tus_header")
    last = patch(client, url, token, 40 * KiB, data[40 * KiB :], Upload_Length=str(len(data)))
    assert last.status_code == 204 and last.headers["Upload-Length"] == str(len(data))
    done = wait_for_state(client, stack.url, token, upload_id(url))
    assert done["total_bytes"] == len(data) and done["sha256"] == hashlib.sha256(data).hexdigest()


def test_tus_js_client_deferred_length(stack, client, tmp_path):
    js_round_trip(stack, client, tmp_path, 3 * 1024 * KiB + 5, "d.bin", uploadLengthDeferred=True, chunkSize=1024 * KiB)


def test_concatenation_of_partial_uploads(stack, client):
    token = stack.token()
    data = os.urandom(300 * KiB + 3)
    pieces = [data[: 100 * KiB], data[100 * KiB : 250 * KiB], data[250 * KiB :]]
    parts = [new_upload(client, stack, token, len(p), Upload_Concat="partial") for p in pieces]
    # sent in reverse order: partial uploads are independent
    for url, piece in reversed(list(zip(parts, pieces, strict=True))):
        assert patch(client, url, token, 0, piece).status_code == 204
        assert client.head(url, headers={**bearer(token), **TUS}).headers["Upload-Concat"] == "partial"
    unfinished = new_upload(client, stack, token, 10, Upload_Concat="partial")
    r = create(client, stack, token, Upload_Concat="final;" + " ".join([*parts, unfinished]))
    assert_tus_error(r, 400, "invalid_concatenation")
    stranger = create(client, stack, stack.token(), Upload_Concat="final;" + " ".join(parts))
    assert_tus_error(stranger, 400, "invalid_concatenation")

    relative = [p.replace(stack.url, "") for p in parts]
    r = create(
        client,
        stack,
        token,
        Upload_Concat="final;" + " ".join(relative),
        Upload_Metadata=f"filename {base64.b64encode(b'joined.bin').decode()}",
    )
    assert r.status_code == 201, r.text
    final = r.headers["Location"]
    done = wait_for_state(client, stack.url, token, upload_id(final))
    assert done["state"] == "complete", done
    assert done["sha256"] == hashlib.sha256(data).hexdigest() and done["file_name"] == "joined.bin"
    assert client.get(f"{stack.url}/download/{upload_id(final)}", headers=bearer(token)).content == data
    head = client.head(final, headers={**bearer(token), **TUS})
    assert head.headers["Upload-Concat"].startswith("final;") and head.headers["Upload-Offset"] == str(len(data))
    # the parts' bytes now live in the final file only
    for url in parts:
        wait_until(
            lambda url=url: client.head(url, headers={**bearer(token), **TUS}).status_code == 404,
            timeout=10,
            what="the partial upload to be removed",
        )


def test_tus_js_client_parallel_uploads(stack, client, tmp_path):
    events = js_round_trip(stack, client, tmp_path, 3 * 1024 * KiB + 1000, "p.bin", parallelUploads=3)
    final = upload_id(events[-1]["url"])
    stored = stack_redis(stack).hget(f"ft:up:{final}", "tus_parts")
    assert len(json.loads(stored)) == 3  # a final concatenation of three partial uploads


def test_a_tus_upload_is_an_ordinary_upload(stack, client):
    """/status, DELETE /upload and /download work on it."""
    token = stack.token()
    url = new_upload(client, stack, token, 20)
    file_id = upload_id(url)
    assert patch(client, url, token, 0, b"a" * 8).status_code == 204
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["missing_ranges"] == [[8, 19]] and status["received_bytes"] == 8
    assert client.get(f"{stack.url}/download/{file_id}", headers=bearer(token)).status_code == 409
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token)).status_code == 204
    assert_tus_error(client.head(url, headers={**bearer(token), **TUS}), 404, "not_found")


def test_cors_preflight_and_exposed_headers(make_stack, client):
    stack = make_stack(FT_CORS_ORIGINS="https://app.example, https://other.example")
    preflight = client.options(
        f"{stack.url}/files/",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "authorization, tus-resumable, upload-offset, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    assert "upload-offset" in preflight.headers["access-control-allow-headers"].lower()
    token = stack.token()
    r = create(client, stack, token, 10, Origin="https://app.example")
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"upload-offset", "location", "upload-length", "upload-expires", "tus-resumable"} <= exposed
    refused = client.options(
        f"{stack.url}/files/", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"}
    )
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_no_cors_by_default(stack, client):
    r = create(client, stack, stack.token(), 10, Origin="https://app.example")
    assert r.status_code == 201 and "access-control-allow-origin" not in r.headers
    preflight = client.options(
        f"{stack.url}/files/", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"}
    )
    assert "access-control-allow-origin" not in preflight.headers


# --- the IETF draft, as clients other than tus-js-client send it --------------------------
def draft(token: str, version: str = "6", **headers: str) -> dict:
    return {
        **bearer(token),
        "Upload-Draft-Interop-Version": version,
        **{k.replace("_", "-"): v for k, v in headers.items()},
    }


def test_draft_whole_upload_in_one_request_without_a_length(stack, client):
    """As Apple's URLSession starts: POST with Upload-Complete: ?1 and the whole body."""
    token = stack.token()
    data = os.urandom(150 * KiB)
    r = client.post(
        f"{stack.url}/files/",
        content=data,
        headers=draft(
            token,
            Upload_Complete="?1",
            Content_Type="image/png",
            Content_Disposition="attachment; filename*=UTF-8''%C3%A9t%C3%A9.png",
        ),
    )
    assert r.status_code == 201, r.text
    assert r.headers["Upload-Complete"] == "?1" and r.headers["Upload-Offset"] == str(len(data))
    done = wait_for_state(client, stack.url, token, upload_id(r.headers["Location"]))
    assert done["total_bytes"] == len(data) and done["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["file_name"] == "\u00e9t\u00e9.png"


@pytest.mark.parametrize(
    "version,first,last",
    [
        ("6", {"Upload_Complete": "?0"}, {"Upload_Complete": "?1"}),
        ("3", {"Upload_Incomplete": "?1"}, {"Upload_Incomplete": "?0"}),
    ],
    ids=["complete-header", "older-incomplete-header"],
)
def test_draft_unknown_length_then_offset_retrieval_and_append(stack, client, version, first, last):
    token = stack.token()
    data = os.urandom(120 * KiB)
    r = client.post(f"{stack.url}/files/", content=data[: 30 * KiB], headers=draft(token, version, **first))
    assert r.status_code == 201, r.text
    url = r.headers["Location"]
    head = client.head(url, headers=draft(token, version))
    assert head.status_code == 204 and head.headers["Upload-Offset"] == str(30 * KiB)
    assert head.headers["Upload-Complete"] == "?0" and head.headers["Cache-Control"] == "no-store"
    done_patch = client.patch(
        url,
        content=data[30 * KiB :],
        headers=draft(token, version, Upload_Offset=str(30 * KiB), Content_Type="application/partial-upload", **last),
    )
    assert done_patch.status_code == 204 and done_patch.headers["Upload-Complete"] == "?1"
    done = wait_for_state(client, stack.url, token, upload_id(url))
    assert done["total_bytes"] == len(data) and done["sha256"] == hashlib.sha256(data).hexdigest()


def test_draft_cancellation_and_unknown_version(stack, client):
    token = stack.token()
    r = client.post(f"{stack.url}/files/", headers=draft(token, Upload_Complete="?0", Upload_Length="10"))
    url = r.headers["Location"]
    assert client.delete(url, headers=draft(token)).status_code == 204
    assert_tus_error(client.head(url, headers=draft(token)), 404, "not_found")
    assert_tus_error(
        client.post(f"{stack.url}/files/", headers=draft(token, "99", Upload_Complete="?0")),
        412,
        "unsupported_tus_version",
    )
    assert_tus_error(
        client.post(f"{stack.url}/files/", headers=draft(token, Upload_Complete="yes")), 400, "invalid_tus_header"
    )
    # from interop version 6 (draft-04/05) on, an append says application/partial-upload
    r = client.post(f"{stack.url}/files/", headers=draft(token, Upload_Complete="?0", Upload_Length="10"))
    url = r.headers["Location"]
    untyped = client.patch(url, content=b"0123456789", headers=draft(token, Upload_Offset="0", Upload_Complete="?1"))
    assert_tus_error(untyped, 415, "unsupported_media_type")
    older = client.patch(url, content=b"0123456789", headers=draft(token, "5", Upload_Offset="0", Upload_Complete="?1"))
    assert older.status_code == 204 and older.headers["Upload-Complete"] == "?1"
