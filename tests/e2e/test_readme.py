"""The README's shell examples work pasted as they are: every ```sh block that follows the
marker `<!-- test: runs against a live stack -->` runs under bash against a stack of its own,
with the README's user name and password, only the port changed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

MARKER = "<!-- test: runs against a live stack -->"
README_URL = "http://127.0.0.1:8000"


def runnable_blocks(text: str) -> list[str]:
    return re.findall(re.escape(MARKER) + r"\s*\n```sh\n(.*?)\n```", text, re.DOTALL)


BLOCKS = runnable_blocks((ROOT / "README.md").read_text())


def credentials(block: str) -> tuple[str, str]:
    found = re.search(r'"username":"([^"]+)","password":"([^"]+)"', block)
    assert found, "a runnable block logs in with the README's user name and password"
    return found.group(1), found.group(2)


def run_block(block: str, url: str, workdir: Path) -> subprocess.CompletedProcess:
    """Run the block as a shell would run it pasted, in an empty directory (and its TMPDIR)."""
    (workdir / "tmp").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FT_")}
    env["TMPDIR"] = str(workdir / "tmp")
    return subprocess.run(
        ["bash"],
        input=block.replace(README_URL, url),
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_marks_its_curl_example_runnable():
    assert any("curl" in block for block in BLOCKS)


@pytest.fixture
def readme_stack(make_stack):
    """A stack whose admin is the README's (the blocks use one user name and password)."""
    [(name, password)] = {credentials(block) for block in BLOCKS}
    return make_stack(FT_ADMIN_USERNAME=name, FT_ADMIN_PASSWORD=password)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_pasted(readme_stack, tmp_path, index):
    result = run_block(BLOCKS[index], readme_stack.url, tmp_path / "shell")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    for line in lines:  # one answer per line, none of them an error
        if line.startswith("{"):
            assert "code" not in json.loads(line), line
    if "/upload/" in BLOCKS[index]:
        upload, status, hello, cleanup = lines
        assert json.loads(upload)["received_bytes"] == 12
        assert json.loads(status)["state"] == "complete" and json.loads(status)["file_name"] == "hello.txt"
        assert hello == "hello"
        assert json.loads(cleanup) == {"removed": [], "freed_bytes": 0}
    if "/metrics" in BLOCKS[index]:
        assert any(
            line.startswith('ft_http_requests_total{method="POST",route="/token",status="200"}') for line in lines
        ), result.stdout
    assert [p.name for p in (tmp_path / "shell").rglob("*")] == ["tmp"]  # it cleaned up after itself


def test_readme_block_fails_loudly_on_a_wrong_password(readme_stack, tmp_path):
    [block] = [b for b in BLOCKS if "/upload/" in b]
    _name, password = credentials(block)
    result = run_block(
        block.replace(f'"password":"{password}"', '"password":"not the password"'), readme_stack.url, tmp_path / "shell"
    )
    assert result.returncode != 0
    assert "login failed" in result.stderr and "invalid_credentials" in result.stderr
    assert "/upload/" not in result.stdout and result.stdout == ""  # it stopped at the login
