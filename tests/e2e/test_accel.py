"""FT_ACCEL_REDIRECT=true: the real API (download router, auth, ownership) behind a real nginx
running deploy/nginx.conf. The API answers with X-Accel-Redirect and nginx sends the bytes."""

from __future__ import annotations

import hashlib
import os
import subprocess

import httpx
import pytest

from ops.redis_server import free_port
from tests.support import (
    bearer,
    deploy_nginx_conf,
    new_id,
    own_stack,
    require_tool,
    running_nginx,
    send_chunk,
    wait_for_state,
)

require_tool("nginx", module_level=True)
SIZE = 700_001


class Accel:
    def __init__(self, stack, nginx_url: str) -> None:
        self.stack, self.url = stack, nginx_url
        self.owner, self.other = stack.token(), stack.token()
        self.data = os.urandom(SIZE)
        self.file_id = new_id("accel")
        with httpx.Client(timeout=60) as c:
            assert (
                send_chunk(
                    c, stack.url, self.owner, self.file_id, self.data, 0, SIZE - 1, X_File_Name="r%C3%A9sum%C3%A9.pdf"
                ).status_code
                == 200
            )
            self.sha256 = wait_for_state(c, stack.url, self.owner, self.file_id)["sha256"]


@pytest.fixture(scope="module")
def accel(tmp_path_factory, redis_server):
    """A stack of its own in accel mode (module scope: several tests share it), nginx in front."""
    root = tmp_path_factory.mktemp("accel")
    with own_stack(root, redis_server.url, 12, FT_ACCEL_REDIRECT="true") as stack:
        port = free_port()
        conf = deploy_nginx_conf(port, int(stack.url.rsplit(":", 1)[1]), stack.data_dir / "files")
        with running_nginx(root / "nginx", conf, port, "/health") as url:
            yield Accel(stack, url)


def test_the_api_hands_the_bytes_to_nginx(accel):
    """Asked directly, the API sends no byte of the file: only the redirect and the validators."""
    r = httpx.get(f"{accel.stack.url}/download/{accel.file_id}", headers=bearer(accel.owner))
    assert r.status_code == 200
    assert r.headers["x-accel-redirect"] == f"/_ft_files/{accel.file_id}/data"
    assert r.content == b"" and r.headers["etag"] == f'"{accel.sha256}"'


def test_whole_file_and_ranges_through_nginx(accel):
    with httpx.Client(base_url=accel.url, headers=bearer(accel.owner), timeout=60) as c:
        whole = c.get(f"/download/{accel.file_id}")
        assert whole.status_code == 200 and "x-accel-redirect" not in whole.headers
        assert hashlib.sha256(whole.content).hexdigest() == accel.sha256
        assert whole.headers["etag"] == f'"{accel.sha256}"'
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in whole.headers["content-disposition"]
        assert whole.headers["accept-ranges"] == "bytes"

        part = c.get(f"/download/{accel.file_id}", headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == accel.data[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{SIZE}"

        suffix = c.get(f"/download/{accel.file_id}", headers={"Range": "bytes=-10"})
        assert suffix.status_code == 206 and suffix.content == accel.data[-10:]

        several = c.get(f"/download/{accel.file_id}", headers={"Range": "bytes=0-9,500000-500009"})
        assert several.status_code == 206 and several.headers["content-type"].startswith("multipart/byteranges")
        assert accel.data[:10] in several.content and accel.data[500000:500010] in several.content

        unsatisfiable = c.get(f"/download/{accel.file_id}", headers={"Range": f"bytes={SIZE}-"})
        assert unsatisfiable.status_code == 416 and unsatisfiable.headers["content-range"] == f"bytes */{SIZE}"

        stale = c.get(f"/download/{accel.file_id}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert stale.status_code == 200 and len(stale.content) == SIZE  # If-Range against the API's ETag

        cached = c.get(f"/download/{accel.file_id}", headers={"If-None-Match": f'"{accel.sha256}"'})
        assert cached.status_code == 304 and cached.content == b""

        head = c.head(f"/download/{accel.file_id}")
        assert head.status_code == 200 and int(head.headers["content-length"]) == SIZE


def test_nginx_serves_nothing_the_api_did_not_authorise(accel):
    with httpx.Client(base_url=accel.url, timeout=30) as c:
        anonymous = c.get(f"/download/{accel.file_id}")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "not_authenticated"
        stranger = c.get(f"/download/{accel.file_id}", headers=bearer(accel.other))
        assert stranger.status_code == 404 and stranger.json()["code"] == "not_found"
        # The internal location cannot be asked for from outside.
        direct = c.get(f"/_ft_files/{accel.file_id}/data", headers=bearer(accel.owner))
        assert direct.status_code == 404 and accel.data[:64] not in direct.content


def test_curl_resumes_through_nginx(accel, tmp_path):
    curl = require_tool("curl")
    out = tmp_path / "half.bin"
    out.write_bytes(accel.data[: SIZE // 2])
    subprocess.run(
        [
            curl,
            "-sS",
            "-f",
            "-C",
            "-",
            "-H",
            f"Authorization: Bearer {accel.owner}",
            "-o",
            str(out),
            f"{accel.url}/download/{accel.file_id}",
        ],
        check=True,
        timeout=60,
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == accel.sha256
