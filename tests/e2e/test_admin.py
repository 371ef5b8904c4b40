"""POST /cleanup and GET /tasks over HTTP, with a real worker."""

from __future__ import annotations

import os
import uuid

import httpx

from tests.support import bearer, send_chunk, wait_for_state, wait_until


def test_cleanup_is_admin_only(stack):
    user = stack.token()
    r = httpx.post(f"{stack.url}/cleanup", headers=bearer(user))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert httpx.get(f"{stack.url}/tasks/abc", headers=bearer(user)).status_code == 403
    assert httpx.post(f"{stack.url}/cleanup").status_code == 401


def test_cleanup_removes_stale_uploads_and_keeps_the_rest(make_stack):
    # A stack of its own: `older_than=0` removes every unfinished upload, other tests' included.
    stack = make_stack()
    user, admin = stack.token(), stack.token("admin")
    data = os.urandom(2000)
    with httpx.Client(timeout=30) as c:
        stale, done = f"stale-{uuid.uuid4().hex[:8]}", f"done-{uuid.uuid4().hex[:8]}"
        assert send_chunk(c, stack.url, user, stale, data, 0, 999).status_code == 200
        assert send_chunk(c, stack.url, user, done, data, 0, 1999).status_code == 200
        wait_for_state(c, stack.url, user, done)
        # Everything idle for at least 0 s is stale: the partial upload goes, the complete file stays.
        r = c.post(f"{stack.url}/cleanup", params={"older_than": 0}, headers=bearer(admin))
        assert r.status_code == 200, r.text
        body = r.json()
        assert stale in body["removed"] and done not in body["removed"]
        assert body["freed_bytes"] >= 1000
        assert c.get(f"{stack.url}/status/{stale}", headers=bearer(user)).status_code == 404
        assert not (stack.data_dir / "staging" / stale).exists()
        assert c.get(f"{stack.url}/status/{done}", headers=bearer(user)).json()["state"] == "complete"
        assert (stack.data_dir / "files" / done / "data").read_bytes() == data


def test_cleanup_default_age_keeps_fresh_uploads(stack):
    user, admin = stack.token(), stack.token("admin")
    data = os.urandom(100)
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as c:
        send_chunk(c, stack.url, user, fresh, data, 0, 49)
        r = c.post(f"{stack.url}/cleanup", headers=bearer(admin))
        assert r.status_code == 200 and fresh not in r.json()["removed"]
        assert c.get(f"{stack.url}/status/{fresh}", headers=bearer(user)).json()["received_bytes"] == 50


def test_slow_cleanup_answers_202_and_the_task_can_be_read(make_stack):
    stack = make_stack(FT_CLEANUP_WAIT="0")
    admin = stack.token("admin")
    r = httpx.post(f"{stack.url}/cleanup", params={"older_than": 0}, headers=bearer(admin))
    assert r.status_code == 202
    task_id = r.json()["task_id"]
    body = wait_until(
        lambda: (
            (b := httpx.get(f"{stack.url}/tasks/{task_id}", headers=bearer(admin)).json())["state"] == "success" and b
        ),
        timeout=30,
        what="the cleanup task to finish",
    )
    assert body["result"]["removed"] == [] and "freed_bytes" in body["result"]


def test_unknown_task_is_404(stack):
    admin = stack.token("admin")
    r = httpx.get(f"{stack.url}/tasks/00000000-0000-0000-0000-000000000000", headers=bearer(admin))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
