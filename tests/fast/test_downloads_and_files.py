"""Downloads with ranges, signed links and the files list, in-process (fakeredis).

Against uvicorn, Redis and a worker: tests/e2e/test_download.py, test_files_list.py."""

from __future__ import annotations

import base64
import os
import re

import pytest

from tests.support import send_chunk, wait_for_state

DATA = os.urandom(10_000)


@pytest.fixture
def stored(client, alice) -> str:
    """A complete 10,000-byte file of alice's, uploaded in two chunks."""
    for start, end in ((5000, 9999), (0, 4999)):
        assert (
            send_chunk(client, "", alice.token, "stored", DATA, start, end, X_File_Name="data.bin").status_code == 200
        )
    assert wait_for_state(client, "", alice.token, "stored", timeout=20)["state"] == "complete"
    return "stored"


def get(client, account, file_id: str, **headers: str):
    return client.get(f"/download/{file_id}", headers={**account.headers, **headers})


def test_whole_file_and_single_open_and_suffix_ranges(client, alice, stored):
    whole = get(client, alice, stored)
    assert whole.status_code == 200 and whole.content == DATA
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"].startswith('"')
    for spec, start, end in (("100-199", 100, 199), ("9990-", 9990, 9999), ("-10", 9990, 9999), ("0-99999", 0, 9999)):
        part = get(client, alice, stored, Range=f"bytes={spec}")
        assert part.status_code == 206, spec
        assert part.headers["content-range"] == f"bytes {start}-{end}/10000"
        assert part.content == DATA[start : end + 1]
    head = client.head(f"/download/{stored}", headers=alice.headers)
    assert head.status_code == 200 and head.headers["content-length"] == "10000" and head.content == b""


def test_several_ranges_are_multipart_in_the_order_asked(client, alice, stored):
    answer = get(client, alice, stored, Range="bytes=5000-5009, 0-9")
    assert answer.status_code == 206
    boundary = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", answer.headers["content-type"]).group(1)
    parts = answer.content.split(f"--{boundary}".encode())[1:-1]
    assert len(parts) == 2
    for part, (start, end) in zip(parts, ((5000, 5009), (0, 9)), strict=True):
        head, _, body = part.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{end}/10000".encode() in head
        assert body.removesuffix(b"\r\n") == DATA[start : end + 1]


@pytest.mark.parametrize("spec", ["bytes=10000-", "bytes=abc", "bytes=500-100", "bytes=-0"])
def test_a_malformed_or_unsatisfiable_range_is_416_with_the_size(client, alice, stored, spec):
    answer = get(client, alice, stored, Range=spec)
    assert answer.status_code == 416 and answer.headers["content-range"] == "bytes */10000"


def test_another_unit_is_ignored_and_conditions_are_answered(client, alice, stored):
    assert get(client, alice, stored, Range="items=0-1").status_code == 200
    etag = get(client, alice, stored).headers["etag"]
    assert get(client, alice, stored, **{"If-None-Match": etag}).status_code == 304
    assert get(client, alice, stored, **{"If-Match": '"other"'}).status_code == 412
    stale = get(client, alice, stored, Range="bytes=0-9", **{"If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == DATA


def test_a_file_not_complete_is_409_and_another_users_is_404(client, alice, bob, stored):
    assert send_chunk(client, "", alice.token, "half", DATA, 0, 99).status_code == 200
    answer = get(client, alice, "half")
    assert (answer.status_code, answer.json()["code"]) == (409, "not_complete")
    assert (get(client, bob, stored).status_code, get(client, bob, stored).json()["code"]) == (404, "not_found")


def test_a_signed_link_downloads_without_a_token_and_only_that_file(client, alice, bob, stored):
    assert client.post(f"/files/{stored}/link", headers=bob.headers).status_code == 404
    minted = client.post(f"/files/{stored}/link", headers=alice.headers)
    assert minted.status_code == 200, minted.text
    link = minted.json()
    assert link["expires_in"] == 300 and link["url"].startswith(f"/download/{stored}?")
    assert client.get(link["url"]).content == DATA
    ranged = client.get(link["url"], headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.content == DATA[:10]
    tampered = re.sub(r"sig=([A-Za-z0-9_-])", lambda m: "sig=" + ("B" if m.group(1) != "B" else "C"), link["url"])
    assert (client.get(tampered).status_code, client.get(tampered).json()["code"]) == (403, "invalid_link")
    assert send_chunk(client, "", alice.token, "other", DATA, 0, 99).status_code == 200
    elsewhere = link["url"].replace(f"/download/{stored}", "/download/other")
    assert client.get(elsewhere).status_code == 403
    assert client.delete(f"/upload/{stored}", headers=alice.headers).status_code == 204
    assert client.get(link["url"]).status_code in (403, 404)


def test_files_list_pages_newest_first_and_only_ones_own(client, alice, bob, admin):
    mine = [f"list-{i}" for i in range(5)]
    for file_id in mine:
        assert send_chunk(client, "", alice.token, file_id, DATA, 0, 99).status_code == 200
    assert send_chunk(client, "", bob.token, "bobs", DATA, 0, 99).status_code == 200
    seen, cursor = [], None
    while True:
        page = client.get(
            "/files", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=alice.headers
        )
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2 and all("owner" not in item for item in body["items"])
        seen += [item["file_id"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == list(reversed(mine))  # newest first, each once, nobody else's
    item = client.get("/files/", headers=alice.headers).json()["items"][0]
    assert (item["state"], item["received_bytes"], item["total_bytes"]) == ("uploading", 100, 10_000)
    forged = base64.urlsafe_b64encode(b"1.0/../etc").decode().rstrip("=")
    for params in ({"limit": 0}, {"limit": 1001}, {"cursor": forged}):
        answer = client.get("/files", params=params, headers=alice.headers)
        assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request"), params
    refused = client.get("/files", params={"all": "true"}, headers=alice.headers)
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    everybody = client.get("/files", params={"all": "true"}, headers=admin.headers).json()["items"]
    assert {item["file_id"]: item["owner"] for item in everybody} == {**{f: "alice" for f in mine}, "bobs": "bob"}
    bobs = client.get("/files", params={"owner": "bob"}, headers=admin.headers).json()["items"]
    assert [item["file_id"] for item in bobs] == ["bobs"]
