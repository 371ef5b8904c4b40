"""Isolation between users (CONTRACT 3): another user's upload does not exist for you, on every
endpoint and whatever you send along; admin-only endpoints are closed to users; admins see all.

"Does not exist" is checked strictly: the answer for someone else's id is compared with the
answer for an id that nobody has (status, body and the headers that could tell them apart).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from core.state import UploadRepository
from tests.support import bearer, chunk_body, send_chunk, wait_for_state, wait_until

# Headers whose presence or value could tell an existing file from a missing one.
REVEALING_HEADERS = (
    "content-type",
    "content-length",
    "etag",
    "last-modified",
    "accept-ranges",
    "content-range",
    "content-disposition",
    "www-authenticate",
    "allow",
    "retry-after",
)


def _fingerprint(response: httpx.Response) -> tuple:
    return (response.status_code, response.content, tuple((h, response.headers.get(h)) for h in REVEALING_HEADERS))


class World:
    """Two users and an admin; the owner has a complete, a partial and a failed upload."""

    def __init__(self, stack):
        self.url = stack.url
        self.owner, self.other, self.admin = stack.token(), stack.token(), stack.token("admin")
        suffix = uuid.uuid4().hex[:8]
        self.data = os.urandom(300_000)
        self.complete, self.partial, self.failed = f"iso-done-{suffix}", f"iso-part-{suffix}", f"iso-fail-{suffix}"
        self.missing = f"iso-none-{suffix}"  # nobody's
        with httpx.Client(timeout=30) as c:
            assert (
                send_chunk(
                    c,
                    self.url,
                    self.owner,
                    self.complete,
                    self.data,
                    0,
                    len(self.data) - 1,
                    X_File_Name="secret%20plan.pdf",
                ).status_code
                == 200
            )
            assert send_chunk(c, self.url, self.owner, self.partial, self.data, 0, 99_999).status_code == 200
            assert (
                send_chunk(
                    c, self.url, self.owner, self.failed, self.data, 0, 999, total=1000, X_File_SHA256="0" * 64
                ).status_code
                == 200
            )
            assert wait_for_state(c, self.url, self.owner, self.complete)["state"] == "complete"
            assert wait_for_state(c, self.url, self.owner, self.failed)["state"] == "failed"

    def owned(self) -> list[str]:
        return [self.complete, self.partial, self.failed]

    def status(self, file_id: str, token: str | None = None) -> dict:
        return httpx.get(f"{self.url}/status/{file_id}", headers=bearer(token or self.owner)).json()


@pytest.fixture(scope="module")
def world(stack) -> World:
    return World(stack)


def _requests_for(world: World, file_id: str) -> list[tuple[str, str, dict, bytes | None]]:
    """Every request a stranger could try on a file id: (method, path, headers, body)."""
    data = world.data

    def chunk(s: int, e: int, total: int) -> tuple[dict, bytes]:
        headers = {"Content-Range": f"bytes {s}-{e}/{total}", "Content-Type": "application/octet-stream"}
        return headers, chunk_body(data[s : e + 1], s)

    requests = [
        ("GET", f"/status/{file_id}", {}, None),
        ("GET", f"/download/{file_id}", {}, None),
        ("HEAD", f"/download/{file_id}", {}, None),
        ("GET", f"/download/{file_id}", {"Range": "bytes=0-99"}, None),
        ("GET", f"/download/{file_id}", {"Range": "bytes=999999999-"}, None),
        ("GET", f"/download/{file_id}", {"If-None-Match": "*"}, None),
        ("GET", f"/download/{file_id}", {"If-Match": '"nope"'}, None),
        ("HEAD", f"/download/{file_id}", {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"}, None),
        ("DELETE", f"/upload/{file_id}", {}, None),
    ]
    for s, e, total in [
        (0, 99, len(data)),  # overlaps stored bytes: 409 overlap if it leaked
        (100_000, 100_099, len(data)),  # a missing range of the partial upload
        (0, 99, 12345),
    ]:  # another total: 409 total_mismatch if it leaked
        headers, body = chunk(s, e, total)
        requests.append(("POST", f"/upload/{file_id}", headers, body))
    return requests


def test_strangers_get_the_same_404_as_for_a_missing_id(world):
    with httpx.Client(base_url=world.url, timeout=30) as c:
        for file_id in world.owned():
            for (method, path, headers, body), (_, missing_path, _, _) in zip(
                _requests_for(world, file_id), _requests_for(world, world.missing), strict=True
            ):
                if method == "POST":
                    continue  # a chunk for an id nobody has creates it: compared in the next test
                foreign = c.request(method, path, headers={**bearer(world.other), **headers}, content=body)
                missing = c.request(method, missing_path, headers={**bearer(world.other), **headers}, content=body)
                assert foreign.status_code == 404, (method, path, headers, foreign.text)
                if method != "HEAD":
                    assert foreign.json()["code"] == "not_found"
                assert _fingerprint(foreign) == _fingerprint(missing), (method, path, headers)


def test_strangers_cannot_add_to_or_learn_from_someone_elses_upload(world):
    """A chunk for someone else's id is a 404 whatever it would have been for the owner (overlap,
    total_mismatch, already_complete, upload_failed): the same 404 as a status for a missing id."""
    before = {file_id: world.status(file_id) for file_id in world.owned()}
    with httpx.Client(base_url=world.url, timeout=30) as c:
        reference = c.get(f"/status/{world.missing}", headers=bearer(world.other))
        assert reference.status_code == 404
        for file_id in world.owned():
            for method, path, headers, body in _requests_for(world, file_id):
                if method != "POST":
                    continue
                r = c.post(path, headers={**bearer(world.other), **headers}, content=body)
                assert r.status_code == 404, (path, headers, r.text)
                assert r.content == reference.content
    # Nothing changed for the owner: same progress, same times, same bytes.
    assert {file_id: world.status(file_id) for file_id in world.owned()} == before
    with httpx.Client(timeout=30) as c:
        r = c.get(f"{world.url}/download/{world.complete}", headers=bearer(world.owner))
        assert r.status_code == 200 and r.content == world.data


def test_owner_sees_the_same_requests_differently(world):
    """The requests above are not all 404s by accident: the owner gets real answers."""
    with httpx.Client(base_url=world.url, timeout=30) as c:
        assert c.get(f"/status/{world.partial}", headers=bearer(world.owner)).json()["received_bytes"] == 100_000
        assert (
            c.get(f"/download/{world.complete}", headers={**bearer(world.owner), "Range": "bytes=0-99"}).status_code
            == 206
        )
        assert c.get(f"/download/{world.partial}", headers=bearer(world.owner)).status_code == 409
        headers, body = {"Content-Range": f"bytes 0-99/{len(world.data)}"}, chunk_body(world.data[:100], 0)
        r = c.post(f"/upload/{world.partial}", headers={**bearer(world.owner), **headers}, content=body)
        assert r.status_code == 409 and r.json()["code"] == "overlap"  # the owner stored 0-99999 as one chunk
        r = c.post(
            f"/upload/{world.partial}",
            headers={**bearer(world.owner), "Content-Range": "bytes 0-99/12345"},
            content=body,
        )
        assert r.status_code == 409 and r.json()["code"] == "total_mismatch"


def test_a_chunk_for_a_taken_id_is_404_not_a_takeover(world, stack):
    """File ids are one namespace: a stranger cannot claim an id that is someone else's, even
    after the owner's upload failed. (Being refused does tell the stranger that the id is taken:
    see docs/RELIABILITY.md.)"""
    with httpx.Client(timeout=30) as c:
        fresh = f"iso-fresh-{uuid.uuid4().hex[:8]}"
        assert send_chunk(c, world.url, world.other, fresh, world.data, 0, 99, total=100).status_code == 200
        for file_id in world.owned():
            r = send_chunk(c, world.url, world.other, file_id, world.data, 0, 99, total=100)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
    for file_id in world.owned():
        assert world.status(file_id)["file_id"] == file_id  # still the owner's


ADMIN_ONLY = [
    ("POST", "/cleanup", {}),
    ("POST", "/cleanup", {"older_than": 0}),
    ("GET", "/tasks/{real_task}", {}),
    ("GET", "/tasks/{made_up_task}", {}),
]


def test_admin_only_endpoints_are_403_for_users_and_reveal_nothing(make_stack):
    # A stack of its own whose POST /cleanup answers 202, so that a user meets a real task id
    # (an admin's cleanup) beside a made-up one: the two answers must be the same. The test holds
    # the cleanup job's lease while it asks, so the task waits for it (a quick worker could
    # otherwise finish within the API's short wait and answer 200, with no task id).
    own = make_stack(FT_CLEANUP_WAIT="0.001")
    admin, user = own.token("admin"), own.token()
    partial = f"iso-part-{uuid.uuid4().hex[:8]}"
    data = os.urandom(1000)
    with httpx.Client(base_url=own.url, timeout=30) as c:
        assert send_chunk(c, own.url, user, partial, data, 0, 99).status_code == 200
        loop = asyncio.new_event_loop()
        redis = aioredis.Redis.from_url(own.redis_url)
        lease = UploadRepository(redis).job_lease("cleanup", 60, 0)
        try:
            assert loop.run_until_complete(lease.acquire())
            r = c.post("/cleanup", params={"older_than": 10**9}, headers=bearer(admin))
        finally:
            loop.run_until_complete(lease.release())
            loop.run_until_complete(redis.aclose())
            loop.close()
        assert r.status_code == 202, r.text
        ids = {"real_task": r.json()["task_id"], "made_up_task": str(uuid.uuid4())}
        # For the admin the two differ: the real task finishes, the made-up one does not exist.
        wait_until(
            lambda: c.get(f"/tasks/{ids['real_task']}", headers=bearer(admin)).json()["state"] == "success",
            timeout=30,
            what="the admin's cleanup task",
        )
        made_up = c.get(f"/tasks/{ids['made_up_task']}", headers=bearer(admin))
        assert made_up.status_code == 404 and made_up.json()["code"] == "not_found"
        answers = []
        for method, path, params in ADMIN_ONLY:
            r = c.request(method, path.format(**ids), params=params, headers=bearer(user))
            assert r.status_code == 403 and r.json()["code"] == "forbidden", (method, path, r.text)
            answers.append(_fingerprint(r))
        assert answers[2] == answers[3]
        # A user's cleanup request removed nothing: the partial upload is still there.
        assert c.get(f"/status/{partial}", headers=bearer(user)).json()["received_bytes"] == 100


def test_admin_sees_and_may_act_on_everything(world, stack):
    with httpx.Client(base_url=world.url, timeout=30) as c:
        for file_id in world.owned():
            mine = c.get(f"/status/{file_id}", headers=bearer(world.owner))
            admins = c.get(f"/status/{file_id}", headers=bearer(world.admin))
            assert admins.status_code == 200 and admins.json() == mine.json()
        r = c.get(f"/download/{world.complete}", headers=bearer(world.admin))
        assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(world.data).digest()
        assert "filename*=UTF-8''secret%20plan.pdf" in r.headers["content-disposition"]
        r = c.head(f"/download/{world.complete}", headers=bearer(world.admin))
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(world.data)
        r = c.get(f"/download/{world.complete}", headers={**bearer(world.admin), "Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == world.data[10:20]
        # An admin may also finish or delete a user's upload; it stays the owner's.
        rescued = f"iso-rescue-{uuid.uuid4().hex[:8]}"
        assert send_chunk(c, world.url, world.owner, rescued, world.data, 0, 99, total=200).status_code == 200
        assert send_chunk(c, world.url, world.admin, rescued, world.data, 100, 199, total=200).status_code == 200
        assert wait_for_state(c, world.url, world.owner, rescued)["state"] == "complete"
        assert c.get(f"/download/{rescued}", headers=bearer(world.owner)).content == world.data[:200]
        assert c.get(f"/download/{rescued}", headers=bearer(world.other)).status_code == 404
        assert c.delete(f"/upload/{rescued}", headers=bearer(world.admin)).status_code == 204
        wait_until(
            lambda: c.get(f"/status/{rescued}", headers=bearer(world.owner)).status_code == 404,
            timeout=10,
            what="the admin's delete to take effect",
        )
        # ...and read any task's result.
        r = c.post("/cleanup", params={"older_than": 10**9}, headers=bearer(world.admin))
        assert r.status_code in (200, 202)
        if r.status_code == 202:
            assert c.get(f"/tasks/{r.json()['task_id']}", headers=bearer(world.admin)).status_code == 200
