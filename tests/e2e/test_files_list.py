"""GET /files (CONTRACT 10) and signed download links through the real app and worker."""

from __future__ import annotations

import hashlib
import os
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support import bearer, new_id, send_chunk, wait_for_state


def start_upload(client: httpx.Client, stack, token: str, file_id: str, name: str | None = None) -> None:
    """An upload with its first byte stored: it stays `uploading`, and is listed."""
    headers = {"X_File_Name": name} if name else {}
    r = send_chunk(client, stack.url, token, file_id, b"ab", 0, 0, **headers)
    assert r.status_code == 200, r.text


def complete_file(client: httpx.Client, stack, token: str, data: bytes, name: str = "report.bin") -> str:
    file_id = new_id("dl")
    r = send_chunk(client, stack.url, token, file_id, data, 0, len(data) - 1, X_File_Name=name)
    assert r.status_code == 200, r.text
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    return file_id


def list_ids(client, stack, token, **params) -> list[str]:
    r = client.get(f"{stack.url}/files", params=params, headers=bearer(token))
    assert r.status_code == 200, r.text
    return [item["file_id"] for item in r.json()["items"]]


# --- the list ---------------------------------------------------------------------------------


def test_items_newest_first_with_the_contract_fields(stack, client):
    token = stack.token()
    data = os.urandom(5000)
    done = complete_file(client, stack, token, data, name="na%C3%AFve.bin")
    partial = new_id("part")
    start_upload(client, stack, token, partial)
    r = client.get(f"{stack.url}/files/", headers=bearer(token))  # the tus collection URL lists too
    assert r.status_code == 200
    body = r.json()
    assert body["next"] is None
    assert [item["file_id"] for item in body["items"]] == [partial, done]
    newest, older = body["items"]
    assert set(older) == {
        "file_id",
        "file_name",
        "state",
        "total_bytes",
        "received_bytes",
        "created_at",
        "updated_at",
        "sha256",
    }
    assert older["file_name"] == "naïve.bin" and older["state"] == "complete"
    assert older["total_bytes"] == older["received_bytes"] == 5000
    assert older["sha256"] == hashlib.sha256(data).hexdigest()
    assert older["created_at"].endswith("Z")
    assert newest["state"] == "uploading" and newest["received_bytes"] == 1 and newest["sha256"] is None


def test_paging_visits_every_file_exactly_once_while_files_are_added(stack, client):
    token = stack.token()
    originals = [new_id("p") for _ in range(23)]
    for file_id in originals:
        start_upload(client, stack, token, file_id)
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        r = client.get(f"{stack.url}/files", params=params, headers=bearer(token))
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 5
        seen += [item["file_id"] for item in page["items"]]
        cursor, pages = page["next"], pages + 1
        if cursor is None:
            break
        start_upload(client, stack, token, new_id("added"))  # newer than every page so far
    assert pages == 5
    assert len(seen) == len(set(seen))
    assert [f for f in seen if f in originals] == originals[::-1]


def test_users_see_only_their_own_files(stack, client):
    alice, bob = stack.token(), stack.token()
    mine = new_id("alice")
    start_upload(client, stack, alice, mine)
    assert mine in list_ids(client, stack, alice)
    assert list_ids(client, stack, bob) == []
    for params in ({"owner": "someone"}, {"all": "true"}):
        r = client.get(f"{stack.url}/files", params=params, headers=bearer(bob))
        assert r.status_code == 403 and r.json()["code"] == "forbidden"


def test_admins_list_one_owner_or_everybody_with_owner_names(stack, client):
    name, password = stack.add_user()
    from tests.support import login

    user_token = login(stack.url, name, password)
    admin = stack.token("admin")
    theirs = new_id("theirs")
    start_upload(client, stack, user_token, theirs)

    r = client.get(f"{stack.url}/files", params={"owner": name}, headers=bearer(admin))
    assert r.status_code == 200
    assert [(i["file_id"], i["owner"]) for i in r.json()["items"]] == [(theirs, name)]

    r = client.get(f"{stack.url}/files", params={"all": "true", "limit": 1000}, headers=bearer(admin))
    assert r.status_code == 200
    everybody = {i["file_id"]: i["owner"] for i in r.json()["items"]}
    assert everybody[theirs] == name
    assert list_ids(client, stack, admin) == []  # without owner/all: the admin's own files

    r = client.get(f"{stack.url}/files", params={"owner": "nobody-" + new_id()}, headers=bearer(admin))
    assert r.status_code == 404 and r.json()["code"] == "not_found"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"cursor": "not-a-cursor!"},
        {"cursor": "bm9wZQ"},
        {"cursor": "x" * 600},
        {"all": "maybe"},
    ],
)
def test_bad_limit_or_cursor_is_a_400_json_error(stack, client, params):
    r = client.get(f"{stack.url}/files", params=params, headers=bearer(stack.token()))
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request" and r.json()["detail"]


def test_the_list_needs_a_token(stack, client):
    for path in ("/files", "/files/"):
        r = client.get(f"{stack.url}{path}")
        assert r.status_code == 401
        assert r.json()["code"] == "not_authenticated"
        assert r.headers["www-authenticate"] == "Bearer"


def test_deleted_files_leave_the_list(stack, client):
    token = stack.token()
    file_id = complete_file(client, stack, token, b"short-lived")
    assert list_ids(client, stack, token) == [file_id]
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token)).status_code == 204
    assert list_ids(client, stack, token) == []


def test_the_list_comes_back_after_redis_lost_everything(make_stack, client):
    stack = make_stack()
    token = stack.token()
    file_id = complete_file(client, stack, token, os.urandom(3000))
    import redis

    redis.Redis.from_url(stack.redis_url).flushdb()
    r = client.get(f"{stack.url}/files", headers=bearer(token))
    assert r.status_code == 200
    assert [(i["file_id"], i["state"]) for i in r.json()["items"]] == [(file_id, "complete")]


# --- signed links -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linked(stack):
    """A complete file, its owner's token and a fresh link to it."""
    token = stack.token()
    data = os.urandom(300_000)
    with httpx.Client(timeout=60) as client:
        file_id = complete_file(client, stack, token, data, name="photo%20one.jpg")
    return file_id, data, token


def mint(client, stack, token, file_id) -> dict:
    r = client.post(f"{stack.url}/files/{file_id}/link", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def test_a_link_downloads_without_any_header(stack, client, linked):
    file_id, data, token = linked
    link = mint(client, stack, token, file_id)
    assert link["url"].startswith(f"/download/{file_id}?")
    assert "access_token" not in link["url"] and token not in link["url"]
    expires = int(parse_qs(urlsplit(link["url"]).query)["expires"][0])
    assert 0 < expires - time.time() <= 300 + 1
    assert link["expires_at"].endswith("Z")
    with httpx.Client(timeout=60) as anonymous:
        r = anonymous.get(stack.url + link["url"])
        assert r.status_code == 200 and r.content == data
        assert "filename*=UTF-8''photo%20one.jpg" in r.headers["content-disposition"]
        r = anonymous.get(stack.url + link["url"], headers={"Range": "bytes=1000-1999"})
        assert r.status_code == 206 and r.content == data[1000:2000]
        assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
        r = anonymous.head(stack.url + link["url"])
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(data) and r.content == b""


def test_get_files_id_answers_as_download(stack, client, linked):
    file_id, data, token = linked
    r = client.get(f"{stack.url}/files/{file_id}", headers={**bearer(token), "Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == data[-10:]
    link = mint(client, stack, token, file_id)
    query = urlsplit(link["url"]).query
    assert httpx.get(f"{stack.url}/files/{file_id}?{query}").content == data
    assert client.get(f"{stack.url}/files/{file_id}").status_code == 401


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def test_tampered_expired_or_foreign_links_are_refused(stack, client, linked):
    file_id, _, token = linked
    link = mint(client, stack, token, file_id)["url"]
    expires = parse_qs(urlsplit(link).query)["expires"][0]
    sig = parse_qs(urlsplit(link).query)["sig"][0]
    other = complete_file(client, stack, token, b"another file")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    refused = [
        _tampered(link, sig=flipped),
        _tampered(link, expires=str(int(expires) + 60)),  # longer than the signature says
        _tampered(link, expires=str(int(expires) + 10**6)),  # far beyond FT_LINK_TTL
        _tampered(link, expires=str(int(time.time()) - 1)),  # in the past
        _tampered(link, sig="short"),
        _tampered(link, expires="soon"),
        link.replace(f"/download/{file_id}", f"/download/{other}"),  # another file
        link.split("&")[0],  # expires without sig
    ]
    with httpx.Client(timeout=30) as anonymous:
        for url in refused:
            r = anonymous.get(stack.url + url)
            assert r.status_code == 403, (url, r.text)
            assert r.json()["code"] == "invalid_link" and r.json()["detail"]
        assert anonymous.get(stack.url + link).status_code == 200  # the untouched link still works


def test_a_link_stops_when_the_file_is_deleted_or_replaced(stack, client):
    token = stack.token()
    file_id = complete_file(client, stack, token, b"first version")
    url = mint(client, stack, token, file_id)["url"]
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token)).status_code == 204
    assert httpx.get(stack.url + url).status_code == 403
    # The same id uploaded again with other content: the old link must not serve it.
    r = send_chunk(client, stack.url, token, file_id, b"second version", 0, 13)
    assert r.status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    r = httpx.get(stack.url + url)
    assert r.status_code == 403 and r.json()["code"] == "invalid_link"


def test_links_are_minted_by_the_owner_for_complete_files_only(stack, client, linked):
    file_id, _, _ = linked
    stranger = stack.token()
    r = client.post(f"{stack.url}/files/{file_id}/link", headers=bearer(stranger))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert client.post(f"{stack.url}/files/{file_id}/link").status_code == 401
    assert mint(client, stack, stack.token("admin"), file_id)["url"]
    owner = stack.token()
    partial = new_id("part")
    start_upload(client, stack, owner, partial)
    r = client.post(f"{stack.url}/files/{partial}/link", headers=bearer(owner))
    assert r.status_code == 409 and r.json()["code"] == "not_complete"
