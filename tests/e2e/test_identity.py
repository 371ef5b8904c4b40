"""CONTRACT 3 (v2): a user's identity is never reused. Removing `erin` and adding a new `erin`
gives the new one none of the old one's files or tokens; admins still see the old files."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import redis

from core.state import upload_key
from tests.support import bearer, login, new_id, send_chunk, wait_for_state, wait_until


def test_a_new_user_of_a_removed_name_gets_nothing_of_the_old_one(stack, client):
    name = f"erin-{uuid.uuid4().hex[:8]}"
    stack.users.set(name, "old erin's password")
    old_token = login(stack.url, name, "old erin's password")
    admin = stack.token("admin")
    file_id, data = new_id("erin"), os.urandom(50_000)
    assert send_chunk(client, stack.url, old_token, file_id, data, 0, len(data) - 1).status_code == 200
    wait_for_state(client, stack.url, old_token, file_id, states=("complete",))

    old_erin = stack.users.remove(name)
    wait_until(
        lambda: client.get(f"{stack.url}/status/{file_id}", headers=bearer(old_token)).status_code == 401,
        timeout=10,
        what="the removed user's token to be refused",
    )
    new_erin = stack.users.set(name, "new erin's password")
    new_token = login(stack.url, name, "new erin's password")
    assert new_erin.id != old_erin.id and new_erin.token_version == old_erin.token_version == 0

    def as_new_erin() -> list[httpx.Response]:
        return [
            client.get(f"{stack.url}/status/{file_id}", headers=bearer(new_token)),
            client.get(f"{stack.url}/download/{file_id}", headers=bearer(new_token)),
            send_chunk(client, stack.url, new_token, file_id, data, 0, len(data) - 1),
            client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(new_token)),
        ]

    for response in as_new_erin():
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), response.text
    # Same name, same token version as the new erin's: the old token is still refused (its uid).
    response = client.get(f"{stack.url}/status/{file_id}", headers=bearer(old_token))
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"

    # The file is recorded, durably, as the old identity's: after Redis forgets it, the state
    # restored from disk still belongs to the old id, not to the name.
    meta = json.loads((stack.data_dir / "files" / file_id / "meta.json").read_text())
    assert meta["owner"] == old_erin.id
    with redis.Redis.from_url(stack.redis_url) as state:
        assert state.delete(upload_key(file_id)) == 1
    for response in as_new_erin():
        assert response.status_code == 404, response.text

    # An admin still sees and fetches everything the old erin left.
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(admin))
    assert status.status_code == 200 and status.json()["state"] == "complete"
    assert client.get(f"{stack.url}/download/{file_id}", headers=bearer(admin)).content == data
