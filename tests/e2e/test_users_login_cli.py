"""`python -m api.users add|list|remove` (README) against the running API that reads the same store."""

from __future__ import annotations

import os
import subprocess
import uuid

import httpx

from tests.support import PYTHON, ROOT, bearer, login, wait_until


def users_cli(stack, *args: str, password: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env.update(FT_DATA_DIR=str(stack.data_dir), PYTHONPATH=str(ROOT))
    if password is not None:
        env["FT_PASSWORD"] = password
    return subprocess.run(
        [PYTHON, "-m", "api.users", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def listed(stack) -> dict[str, str]:
    result = users_cli(stack, "list")
    assert result.returncode == 0, result.stderr
    return {name: role for name, role, *_id_and_created in (line.split("\t") for line in result.stdout.splitlines())}


def test_add_list_promote_and_remove_a_user(stack):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    added = users_cli(stack, "add", name, password="first password")
    assert added.returncode == 0 and added.stdout.splitlines()[-1].startswith(f"added {name} (user"), added
    assert listed(stack)[name] == "user"
    token = login(stack.url, name, "first password")
    assert httpx.get(f"{stack.url}/status/nothing", headers=bearer(token)).status_code == 404  # a valid token
    assert httpx.post(f"{stack.url}/cleanup", headers=bearer(token)).status_code == 403

    promoted = users_cli(stack, "add", name, "--admin", password="second password")
    assert promoted.returncode == 0 and promoted.stdout.splitlines()[-1].startswith(f"updated {name} (admin"), promoted
    assert listed(stack)[name] == "admin"
    wrong = httpx.post(f"{stack.url}/token", json={"username": name, "password": "first password"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_credentials"
    admin_token = login(stack.url, name, "second password")
    assert httpx.get(f"{stack.url}/tasks/{uuid.uuid4()}", headers=bearer(admin_token)).status_code == 404  # admin

    removed = users_cli(stack, "remove", name)
    assert removed.returncode == 0 and f"removed {name}" in removed.stdout, removed
    assert name not in listed(stack)
    # Its tokens stop working, within the API's user cache (FT_USER_CACHE_TTL, 2 s).
    gone = wait_until(
        lambda: (r := httpx.get(f"{stack.url}/status/nothing", headers=bearer(admin_token))).status_code == 401 and r,
        timeout=15,
        what="the removed user's token to be refused",
    )
    assert gone.json()["code"] == "not_authenticated"
    again = users_cli(stack, "remove", name)
    assert again.returncode == 1 and "no user" in again.stderr


def test_add_without_a_password_or_a_terminal_refuses(stack):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    result = users_cli(stack, "add", name)
    assert result.returncode != 0 and "FT_NEW_PASSWORD" in result.stderr
    assert name not in listed(stack)
