"""Helpers for the tus tests: real clients (tus-js-client under Node, tuspy) against a stack."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, bearer

JS_DIR = ROOT / "tests" / "js"
TUS_JS = JS_DIR / "tus_upload.mjs"
TUS = {"Tus-Resumable": "1.0.0"}
PATCH_TYPE = {"Content-Type": "application/offset+octet-stream"}


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        pytest.skip("needs node and `npm ci` in tests/js (.ci/run does both)")
    return node


def js_config(stack, token: str, path: Path, **options) -> dict:
    return {"endpoint": f"{stack.url}/files/", "path": str(path), "token": token, **options}


def run_js(config: dict, timeout: float = 180) -> list[dict]:
    """Run tus-js-client to the end; its events, or a failure with its output."""
    done = subprocess.run([node_or_skip(), str(TUS_JS), json.dumps(config)], cwd=JS_DIR, capture_output=True,
                          text=True, timeout=timeout)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"tus-js-client failed: {done.stdout}\n{done.stderr}"
    return events


def start_js(config: dict, log: Path) -> subprocess.Popen:
    """tus-js-client in the background (its own process group); the caller stops it."""
    with open(log, "wb") as out:
        return subprocess.Popen([node_or_skip(), str(TUS_JS), json.dumps(config)], cwd=JS_DIR, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def create(client: httpx.Client, stack, token: str, length: int | None = None, **headers: str) -> httpx.Response:
    hdrs = {**bearer(token), **TUS}
    if length is not None:
        hdrs["Upload-Length"] = str(length)
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"{stack.url}/files/", headers=hdrs)


def offset(client: httpx.Client, url: str, token: str) -> int:
    r = client.head(url, headers={**bearer(token), **TUS})
    assert r.status_code == 200, r.headers
    return int(r.headers["Upload-Offset"])


def patch(client: httpx.Client, url: str, token: str, at: int, body: bytes, **headers: str) -> httpx.Response:
    hdrs = {**bearer(token), **TUS, **PATCH_TYPE, "Upload-Offset": str(at)}
    hdrs.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.patch(url, content=body, headers=hdrs)
