"""CONTRACT 4 and 5 over real HTTP, with a real worker assembling the files."""

from __future__ import annotations

import hashlib
import os
import random
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support import bearer, chunk_body, new_id, send_chunk, wait_for_state, wait_until, wire_header

MiB = 1024 * 1024


def chunks_of(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, size) - 1) for s in range(0, size, chunk)]


@pytest.fixture
def token(stack):
    return stack.token()


def final_bytes(stack, file_id: str) -> bytes:
    return (stack.data_dir / "files" / file_id / "data").read_bytes()


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
def test_upload_assembles_byte_identical(stack, client, token, order):
    data = os.urandom(3 * MiB + 12345)
    file_id = new_id()
    ranges = chunks_of(len(data), 256 * 1024)
    if order == "shuffled":
        random.Random(7).shuffle(ranges)
    sha = hashlib.sha256(data).hexdigest()
    for i, (s, e) in enumerate(ranges):
        r = send_chunk(
            client, stack.url, token, file_id, data, s, e, X_File_SHA256=sha, X_File_Name="r%C3%A9sum%C3%A9.bin"
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["file_id"] == file_id and body["total_bytes"] == len(data)
        assert body["received_bytes"] == sum(e2 - s2 + 1 for s2, e2 in ranges[: i + 1])
    assert body["state"] == "assembling"
    status = wait_for_state(client, stack.url, token, file_id)
    assert status["state"] == "complete", status
    assert status["sha256"] == sha
    assert status["missing_ranges"] == []
    assert status["file_name"] == "résumé.bin"
    assert final_bytes(stack, file_id) == data


def test_parallel_upload(stack, client, token):
    data = os.urandom(4 * MiB)
    file_id = new_id()
    ranges = chunks_of(len(data), 128 * 1024)
    random.Random(3).shuffle(ranges)

    def send(rng):
        with httpx.Client(timeout=60) as c:
            return send_chunk(c, stack.url, token, file_id, data, *rng).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(send, ranges)) == {200}
    status = wait_for_state(client, stack.url, token, file_id)
    assert status["state"] == "complete"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert final_bytes(stack, file_id) == data


def test_status_tracks_progress_and_missing_ranges(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    assert send_chunk(client, stack.url, token, file_id, data, 200, 399).status_code == 200
    r = send_chunk(client, stack.url, token, file_id, data, 0, 99, X_File_Name="a.txt")
    assert r.json()["next_expected_byte"] == 100
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["state"] == "uploading"
    assert status["received_bytes"] == 300 and status["total_bytes"] == 1000
    assert status["missing_ranges"] == [[100, 199], [400, 999]]
    assert status["next_expected_byte"] == 100
    assert status["file_name"] == "a.txt"
    for field in ("created_at", "updated_at", "expires_at"):
        assert status[field].endswith("Z")
    assert status["persisted_at"] is None and status["sha256"] is None and status["error"] is None
    r = send_chunk(client, stack.url, token, file_id, data, 100, 199)
    assert r.json()["next_expected_byte"] == 400


def test_exact_retransmission_is_acknowledged(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    first = send_chunk(client, stack.url, token, file_id, data, 0, 499)
    again = send_chunk(client, stack.url, token, file_id, data, 0, 499)
    assert again.status_code == 200
    assert again.json() == first.json()


def test_overlap_is_409(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 499)
    r = send_chunk(client, stack.url, token, file_id, data, 400, 599)
    assert r.status_code == 409
    assert r.json()["code"] == "overlap" and r.json()["next_expected_byte"] == 500
    # Same range but other bytes (other CRC) is an overlap too, not a retransmission.
    other = bytearray(data)
    other[0] ^= 0xFF
    r = send_chunk(client, stack.url, token, file_id, bytes(other), 0, 499)
    assert r.status_code == 409 and r.json()["code"] == "overlap"


def test_total_mismatch(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 99)
    r = send_chunk(client, stack.url, token, file_id, data, 100, 199, total=2000)
    assert r.status_code == 409 and r.json()["code"] == "total_mismatch"


def test_chunk_for_completed_file(stack, client, token):
    data = os.urandom(100)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 99)
    wait_for_state(client, stack.url, token, file_id)
    r = send_chunk(client, stack.url, token, file_id, data, 0, 99)
    assert r.status_code == 409 and r.json()["code"] == "already_complete"


def _post(client, stack, token, file_id, body: bytes, content_range: str | None, **extra):
    headers = {**bearer(token), "Content-Type": "application/octet-stream", **extra}
    if content_range is not None:
        headers["Content-Range"] = content_range
    return client.post(f"{stack.url}/upload/{file_id}", content=body, headers=headers)


@pytest.mark.parametrize(
    "file_id",
    [".hidden", "a" * 129, "with space", "semi;colon", "%2e%2e", "..", "ünïcode", "a%2Fb"],
)
def test_invalid_file_id(stack, client, token, file_id):
    r = _post(client, stack, token, file_id, chunk_body(b"x", 0), "bytes 0-0/1")
    # A '/' in the id never reaches the route at all; '..' is resolved by the client to POST /,
    # the web page's path (405: it only answers GET).
    assert r.status_code in (400, 404, 405)
    if r.status_code == 400:
        assert r.json()["code"] == "invalid_file_id"


def test_invalid_file_id_dot_prefixed_is_400(stack, client, token):
    r = _post(client, stack, token, ".env", chunk_body(b"x", 0), "bytes 0-0/1")
    assert r.status_code == 400 and r.json()["code"] == "invalid_file_id"


@pytest.mark.parametrize(
    "content_range",
    [
        None,
        "",
        "bytes 0-9",
        "bytes 9-0/10",
        "bytes 0-10/10",
        "items 0-9/10",
        "bytes -1-9/10",
        "bytes 0-9/*",
        "bytes 0-0/0",
    ],
)
def test_invalid_content_range(stack, client, token, content_range):
    r = _post(client, stack, token, new_id(), chunk_body(b"0123456789", 0), content_range)
    assert r.status_code == 400 and r.json()["code"] == "invalid_content_range"


def test_file_over_the_limit_is_413(stack, client, token):
    r = _post(client, stack, token, new_id(), chunk_body(b"x", 0), f"bytes 0-0/{2**40 + 1}")
    assert r.status_code == 413


def test_chunk_over_the_limit_is_413(make_stack, client):
    small = make_stack(FT_MAX_CHUNK_BYTES="1024")
    token = small.token()
    r = _post(client, small, token, new_id(), chunk_body(b"x" * 1025, 0), "bytes 0-1024/5000")
    assert r.status_code == 413


def test_header_range_disagreeing_with_content_range(stack, client, token):
    payload = b"x" * 10
    body = wire_header(5, 14, zlib.crc32(payload)) + payload
    r = _post(client, stack, token, new_id(), body, "bytes 0-9/100")
    assert r.status_code == 400 and r.json()["code"] == "invalid_chunk_header"


def test_body_shorter_than_header(stack, client, token):
    r = _post(client, stack, token, new_id(), b"short", "bytes 0-9/100")
    assert r.status_code == 400 and r.json()["code"] in ("invalid_chunk_header", "length_mismatch")


def test_length_mismatch_and_nothing_kept(stack, client, token):
    file_id = new_id()
    payload = b"x" * 9
    body = wire_header(0, 9, zlib.crc32(payload)) + payload
    r = _post(client, stack, token, file_id, body, "bytes 0-9/100")
    assert r.status_code == 400 and r.json()["code"] == "length_mismatch"
    assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).status_code == 404


def test_checksum_mismatch_and_nothing_kept(stack, client, token):
    data = os.urandom(100)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 49)
    body = wire_header(50, 99, zlib.crc32(data[50:]) ^ 1) + data[50:]
    r = _post(client, stack, token, file_id, body, "bytes 50-99/100")
    assert r.status_code == 400 and r.json()["code"] == "checksum_mismatch"
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["received_bytes"] == 50 and status["missing_ranges"] == [[50, 99]]
    # ...and the same range is accepted afterwards.
    assert send_chunk(client, stack.url, token, file_id, data, 50, 99).status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert final_bytes(stack, file_id) == data


def test_sha256_mismatch_fails_the_upload(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    r = send_chunk(client, stack.url, token, file_id, data, 0, 999, X_File_SHA256="0" * 64)
    assert r.status_code == 200
    status = wait_for_state(client, stack.url, token, file_id)
    assert status["state"] == "failed"
    assert "SHA-256" in status["error"]
    r = send_chunk(client, stack.url, token, file_id, data, 0, 999)
    assert r.status_code == 409


def test_other_users_see_nothing(stack, client, token):
    data = os.urandom(100)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 49)
    other = stack.token()
    assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(other)).status_code == 404
    r = send_chunk(client, stack.url, other, file_id, data, 50, 99)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    admin = stack.token("admin")
    assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(admin)).status_code == 200


def test_unknown_upload_is_404(stack, client, token):
    r = client.get(f"{stack.url}/status/{new_id()}", headers=bearer(token))
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_bad_optional_headers_are_400(stack, client, token):
    data = os.urandom(10)
    r = send_chunk(client, stack.url, token, new_id(), data, 0, 9, X_File_SHA256="xyz")
    assert r.status_code == 400 and r.json()["code"] == "invalid_sha256"
    r = send_chunk(client, stack.url, token, new_id(), data, 0, 9, X_File_Name="%FF%FE")
    assert r.status_code == 400 and r.json()["code"] == "invalid_file_name"


def test_file_beyond_4_gib_with_sparse_chunks(stack, client, token):
    total = 5 * 1024**3 + 17
    file_id = new_id()
    payload = os.urandom(4096)
    start = 4 * 1024**3 + 100  # START mod 2^32 == 100
    body = chunk_body(payload, start)
    assert body[:4] == (100).to_bytes(4, "big")
    r = _post(client, stack, token, file_id, body, f"bytes {start}-{start + 4095}/{total}")
    assert r.status_code == 200, r.text
    assert r.json()["received_bytes"] == 4096 and r.json()["next_expected_byte"] == 0
    # The header's START must be taken mod 2^32: the unreduced value cannot even be encoded,
    # and a header claiming 0 for this range is refused.
    wrong = wire_header(0, 4095, zlib.crc32(payload)) + payload
    r = _post(client, stack, token, file_id, wrong, f"bytes {start + 8192}-{start + 8192 + 4095}/{total}")
    assert r.status_code == 400 and r.json()["code"] == "invalid_chunk_header"
    status = client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()
    assert status["missing_ranges"] == [[0, start - 1], [start + 4096, total - 1]]
    with open(stack.data_dir / "staging" / file_id / "data", "rb") as staged:
        staged.seek(start)
        assert staged.read(4096) == payload


def test_low_disk_space_is_507_and_changes_nothing(make_stack, client):
    # Demand more free space than any disk has: every chunk is refused before a byte is stored.
    full = make_stack(FT_MIN_FREE_BYTES=str(2**62))
    token = full.token()
    file_id = new_id()
    r = send_chunk(client, full.url, token, file_id, os.urandom(100), 0, 99)
    assert r.status_code == 507 and r.json()["code"] == "insufficient_storage"
    assert client.get(f"{full.url}/status/{file_id}", headers=bearer(token)).status_code == 404
    assert not (full.data_dir / "staging" / file_id).exists()


def test_swagger_authorize_uses_the_password_flow(stack, client):
    schemes = client.get(f"{stack.url}/openapi.json").json()["components"]["securitySchemes"]
    flows = [s["flows"]["password"]["tokenUrl"] for s in schemes.values() if s.get("type") == "oauth2"]
    assert flows == ["token"]


def test_delete_cancels_an_upload_and_frees_the_id(stack, client, token):
    data = os.urandom(1000)
    file_id = new_id()
    send_chunk(client, stack.url, token, file_id, data, 0, 999, X_File_SHA256="0" * 64)
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "failed"
    other = stack.token()
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(other)).status_code == 404
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token)).status_code == 204
    assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).status_code == 404
    assert not (stack.data_dir / "staging" / file_id).exists()
    # The id is free again: the right bytes now complete.
    assert send_chunk(client, stack.url, token, file_id, data, 0, 999).status_code == 200
    assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert client.delete(f"{stack.url}/upload/{file_id}", headers=bearer(token)).status_code == 204
    assert not (stack.data_dir / "files" / file_id).exists()
    assert client.get(f"{stack.url}/download/{file_id}", headers=bearer(token)).status_code == 404


def test_raw_non_ascii_file_name_is_refused(stack, token):
    # httpx would refuse to send it; a raw socket can. Latin-1 bytes are not percent-encoded UTF-8.
    import socket
    from urllib.parse import urlsplit

    body = chunk_body(b"abc", 0)
    parts = urlsplit(stack.url)
    head = (
        f"POST /upload/{new_id()} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Range: bytes 0-2/3\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    ).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(head + b"X-File-Name: r\xe9sum\xe9\r\n\r\n" + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"invalid_file_name"' in answer


def test_several_api_processes_share_one_upload(make_stack, client):
    """FT_API_WORKERS > 1 (uvicorn --workers): chunks of one file land on different processes,
    here with FT_FSYNC_CHUNKS on as well (each chunk fdatasync'ed before it is acknowledged)."""
    multi = make_stack(FT_API_WORKERS="2", FT_FSYNC_CHUNKS="true")
    token = multi.token()
    servers = wait_until(
        lambda: len(found := serving_processes(multi.api.pid)) == 2 and found,
        timeout=30,
        what="uvicorn's two serving processes",
    )
    written_before = {pid: bytes_written(pid) for pid in servers}
    data = os.urandom(2 * MiB)
    file_id = new_id()
    ranges = chunks_of(len(data), 64 * 1024)
    random.Random(11).shuffle(ranges)

    def send(rng):
        with httpx.Client(timeout=60) as c:  # a connection each: spread over both processes
            return send_chunk(c, multi.url, token, file_id, data, *rng).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(send, ranges)) == {200}
    assert wait_for_state(client, multi.url, token, file_id)["sha256"] == hashlib.sha256(data).hexdigest()
    assert final_bytes(multi, file_id) == data
    # Both processes stored chunks: each wrote at least one 64 KiB payload to the staging file
    # (write(2) bytes from /proc/PID/io; the small JSON answers cannot add up to that).
    written = {pid: bytes_written(pid) - written_before[pid] for pid in servers}
    assert all(n >= 64 * 1024 for n in written.values()), written
    assert sum(written.values()) >= len(data)


def serving_processes(supervisor: int) -> list[int]:
    """The pids of uvicorn's worker processes (multiprocessing spawn children of the supervisor)."""
    import psutil

    return [p.pid for p in psutil.Process(supervisor).children() if "spawn_main" in " ".join(p.cmdline())]


def bytes_written(pid: int) -> int:
    with open(f"/proc/{pid}/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))
