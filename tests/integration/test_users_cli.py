"""`python -m api.users` as an operator runs it (issue 14): a real process, a real users file.

Where the password came from is always said; FT_NEW_PASSWORD wins over the client's
FT_PASSWORD; without FT_DATA_DIR the data dir is `make run`'s (ROOT/data), not the cwd's."""

from __future__ import annotations

import os
import subprocess

import pytest

from core.users import UserStore
from tests.support import PYTHON, ROOT


def users_cli(*args: str, cwd=ROOT, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [PYTHON, "-m", "api.users", *args],
        cwd=cwd,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def test_new_password_variable_wins_over_the_clients_and_the_source_is_said(data_dir):
    result = users_cli(
        "add",
        "root",
        "--admin",
        FT_DATA_DIR=str(data_dir),
        FT_PASSWORD="the client's password",
        FT_NEW_PASSWORD="root's own password",
    )
    assert result.returncode == 0, result.stderr
    assert "password from FT_NEW_PASSWORD" in result.stdout
    store = UserStore(data_dir / "users.sqlite3")
    assert store.authenticate("root", "root's own password").is_admin
    assert store.authenticate("root", "the client's password") is None


def test_password_from_ft_password_is_named(data_dir):
    result = users_cli("add", "alice", FT_DATA_DIR=str(data_dir), FT_PASSWORD="secret")
    assert result.returncode == 0, result.stderr
    assert "password from FT_PASSWORD" in result.stdout
    assert UserStore(data_dir / "users.sqlite3").authenticate("alice", "secret") is not None


def test_prompt_asked_for_without_a_terminal_fails_and_creates_nobody(data_dir):
    result = users_cli("add", "bob", "--prompt", FT_DATA_DIR=str(data_dir), FT_PASSWORD="secret")
    assert result.returncode != 0 and "run in a terminal" in result.stderr
    assert UserStore(data_dir / "users.sqlite3").get("bob") is None


def test_list_and_remove_refuse_a_data_dir_without_users(data_dir):
    for args in (["list"], ["remove", "nobody"]):
        result = users_cli(*args, FT_DATA_DIR=str(data_dir))
        assert result.returncode == 1 and "no users database" in result.stderr
        assert f"data dir: {data_dir}" in result.stderr
    assert not data_dir.exists()  # nothing created on the way


def test_relative_data_dir_default_is_the_projects_not_the_cwd(tmp_path):
    result = users_cli("list", cwd=tmp_path)
    assert f"data dir: {ROOT / 'data'}" in result.stderr
    assert not (tmp_path / "data").exists()
    expected = 0 if (ROOT / "data" / "users.sqlite3").exists() else 1
    assert result.returncode == expected, result.stderr


def test_explicit_relative_data_dir_is_taken_from_the_cwd(tmp_path):
    assert users_cli("add", "carol", cwd=tmp_path, FT_DATA_DIR="here", FT_NEW_PASSWORD="pw").returncode == 0
    result = users_cli("list", cwd=tmp_path, FT_DATA_DIR="here")
    assert result.returncode == 0 and result.stdout.startswith("carol\tuser\tu_")
    assert f"data dir: {tmp_path / 'here'}" in result.stderr


def test_remove_says_what_happens_to_the_files(data_dir):
    users_cli("add", "erin", FT_DATA_DIR=str(data_dir), FT_NEW_PASSWORD="pw")
    erin = UserStore(data_dir / "users.sqlite3").get("erin")
    result = users_cli("remove", "erin", FT_DATA_DIR=str(data_dir))
    assert result.returncode == 0, result.stderr
    assert f"removed erin (id {erin.id})" in result.stdout and "admin" in result.stdout
    assert UserStore(data_dir / "users.sqlite3").get("erin") is None
    assert users_cli("remove", "erin", FT_DATA_DIR=str(data_dir)).returncode == 1
