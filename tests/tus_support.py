"""Helpers for the tus tests: real clients (tus-js-client under Node, tuspy) against a stack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.support import ROOT, bearer, wait_for_state

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
    done = subprocess.run(
        [node_or_skip(), str(TUS_JS), json.dumps(config)], cwd=JS_DIR, capture_output=True, text=True, timeout=timeout
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"tus-js-client failed: {done.stdout}\n{done.stderr}"
    return events


def start_js(config: dict, log: Path) -> subprocess.Popen:
    """tus-js-client in the background (its own process group); the caller stops it."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [node_or_skip(), str(TUS_JS), json.dumps(config)],
            cwd=JS_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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


def sample(tmp_path: Path, size: int, name: str = "sample.bin") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def check_complete(client: httpx.Client, stack, token: str, file_id: str, data: bytes, name: str) -> dict:
    """Verified by a worker, downloaded byte-identical, under its own name."""
    done = wait_for_state(client, stack.url, token, file_id)
    assert done["state"] == "complete", done
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["file_name"] == name
    got = client.get(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert got.status_code == 200
    assert got.content == data
    assert f"filename*=UTF-8''{quote(name)}" in got.headers["content-disposition"]
    return done


def js_round_trip(stack, client: httpx.Client, tmp_path: Path, size: int, name: str, **options) -> list[dict]:
    """tus-js-client uploads `size` random bytes; the file must then be complete and identical."""
    token = stack.token()
    path, data = sample(tmp_path, size, name)
    events = run_js(js_config(stack, token, path, filename=name, **options))
    assert events[-1]["event"] == "success"
    check_complete(client, stack, token, upload_id(events[-1]["url"]), data, name)
    return events
