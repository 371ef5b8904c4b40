"""What the README promises of `python -m client` when the server misbehaves.

A small HTTP reverse proxy (tests/faulty_proxy.py) stands between the client (a real process)
and the real stack. It answers chosen requests itself (503, 429 with Retry-After) or alters what
the API sent (one flipped byte in a download), and records every request it saw and when.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess

from tests.faulty_proxy import FaultyProxy
from tests.support import PYTHON, ROOT, new_id

KiB = 1024


def client_cli(env: dict[str, str], url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "client", "--url", url, "--quiet", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def upload_direct(stack, env, tmp_path, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    (src := tmp_path / "src.bin").write_bytes(data)
    file_id = new_id("cli")
    result = client_cli(env, stack.url, "upload", str(src), "--file-id", file_id)
    assert result.returncode == 0, result.stderr
    return file_id, data


def test_upload_retries_503_and_429_with_backoff_then_completes(stack, cli_env, tmp_path):
    data = os.urandom(600 * KiB + 7)
    (src := tmp_path / "flaky.bin").write_bytes(data)
    file_id = new_id("retry")

    def fault(method, path, content_range, before):
        # The first chunk: three 503s, then a 429 asking for one second; then it goes through.
        if method == "POST" and path.startswith("/upload/") and content_range.startswith("bytes 0-"):
            return {0: (503, None), 1: (503, None), 2: (503, None), 3: (429, "1")}.get(before)
        return None

    with FaultyProxy(stack.url, fault) as proxy:
        result = client_cli(cli_env, proxy.url, "upload", str(src), "--file-id", file_id, "--chunk-size", "256KiB")
    assert result.returncode == 0, result.stderr
    assert (stack.data_dir / "files" / file_id / "data").read_bytes() == data

    first = [s for s in proxy.of("POST", f"/upload/{file_id}") if s.content_range.startswith("bytes 0-")]
    assert [s.status for s in first] == [503, 503, 503, 429, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(first)]
    # Backoff: the n-th retry waits at least half of 0.25 s * 2^n (the client's default base), and
    # at least the 429's Retry-After. Only lower bounds: a loaded machine can only make them longer.
    for n, gap in enumerate(gaps[:3]):
        assert gap >= 0.25 * 2**n / 2, (n, gaps)
    assert gaps[3] >= 1.0, gaps


def test_upload_exits_7_when_the_server_stays_unavailable(stack, cli_env, tmp_path):
    (src := tmp_path / "never.bin").write_bytes(os.urandom(100 * KiB))
    file_id = new_id("down")

    def fault(method, path, content_range, before):
        return (503, None) if method == "POST" and path.startswith("/upload/") else None

    with FaultyProxy(stack.url, fault) as proxy:
        result = client_cli(cli_env, proxy.url, "--retries", "3", "upload", str(src), "--file-id", file_id)
    assert result.returncode == 7, (result.returncode, result.stderr)
    assert "unavailable" in result.stderr
    # It really retried, as many times as it was told, before giving up.
    assert len(proxy.of("POST", f"/upload/{file_id}")) == 4


def test_download_whose_bytes_do_not_match_the_etag_is_refused(stack, cli_env, tmp_path):
    file_id, data = upload_direct(stack, cli_env, tmp_path, 300 * KiB + 5)

    def flip_one_byte(method, path, body):
        if method == "GET" and path.startswith("/download/") and len(body) > 1000:
            return body[:1000] + bytes([body[1000] ^ 0x01]) + body[1001:]
        return body

    target = tmp_path / "out.bin"
    with FaultyProxy(stack.url, mutate=flip_one_byte) as proxy:
        result = client_cli(cli_env, proxy.url, "download", file_id, "-o", str(target))
    # The ETag the proxy passed on is the SHA-256 of the real file: the client must notice.
    assert [s.status for s in proxy.of("GET", f"/download/{file_id}")] == [200]
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "SHA-256 mismatch" in result.stderr
    assert not target.exists()
    assert not list(tmp_path.glob("out.bin.part*"))  # nothing half-trusted is left to resume from
    # Without the proxy the same command gets the right bytes.
    again = client_cli(cli_env, stack.url, "download", file_id, "-o", str(target))
    assert again.returncode == 0, again.stderr
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
