"""The front door (api/http_protocol.py, api/__main__.py): exact head cap, header-read and
keep-alive timeouts, and 503 `overloaded` + Retry-After when a process is saturated.

Each test runs its own API (`python -m api`) with small limits, through raw sockets: the
point is what arrives on the wire, byte for byte and piece by piece."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from tests.support import bearer, chunk_body, login, new_id, read_answer, send_chunk, start_api, wait_until

KiB = 1024
DB = 12  # a database of the session's redis-server of our own (conftest uses the low ones)


@pytest.fixture
def api(tmp_path, redis_server):
    """Start an API with the given FT_* settings; every one started is stopped at the end."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    started = []

    def start(**env: str) -> str:
        proc, base = start_api(tmp_path / f"data{len(started)}", url, tmp_path, **env)
        started.append(proc)
        return base

    yield start
    for proc in started:
        proc.stop()
    redis.Redis.from_url(url).flushdb()


def connect(url: str, timeout: float = 10.0) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def padded_head(total: int) -> bytes:
    """A GET /openapi.json head of exactly `total` bytes."""
    bare = len(get("/openapi.json", "X-Pad: \r\n"))
    return get("/openapi.json", f"X-Pad: {'a' * (total - bare)}\r\n")


# --- the head cap counts head bytes only --------------------------------------------------------


@pytest.mark.parametrize(
    "size, piece",
    [(100 * KiB, None), (70 * KiB, 32 * KiB), (64 * KiB + 1, 1 * KiB)],
    ids=["100KiB-one-write", "70KiB-in-32KiB-pieces", "64KiB+1-in-1KiB-pieces"],
)
def test_a_head_over_64_kib_is_refused_however_it_arrives(api, size, piece):
    url = api()
    request = padded_head(size)
    assert len(request) == size
    with connect(url) as sock:
        try:
            for offset in range(0, size, piece or size):
                sock.sendall(request[offset : offset + (piece or size)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = read_answer(sock)
    assert status == 431, (status, body)
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["code"] == "request_header_too_large"


def test_a_head_of_exactly_64_kib_is_served_and_its_body_is_not_counted(api):
    """The cap is exact: 65,536 head bytes pass, in pieces too, and a big body in the same write
    as a small head is body, not head."""
    url = api()
    request = padded_head(64 * KiB)
    with connect(url) as sock:
        for offset in range(0, len(request), 5000):
            sock.sendall(request[offset : offset + 5000])
        status, _, _ = read_answer(sock)
        assert status == 200
        # Same connection: a small head and a 200 KiB body in one write (no token: 401, not 431).
        body = b"\0" * (200 * KiB)
        sock.sendall(b"POST /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        status, _, answer = read_answer(sock)
        assert status == 401, answer


# --- slow and idle clients ---------------------------------------------------------------------


def test_a_head_that_trickles_is_cut_after_the_header_timeout(api):
    url = api(FT_HEADER_TIMEOUT="1")
    with connect(url) as sock:
        sock.sendall(b"GET /openapi.json HTTP/1.1\r\n")
        answer = None
        for _ in range(40):  # one header byte every 0.1 s: never a complete head
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.1)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        # Cut within the 4 s the trickle lasts: otherwise `answer` would still be None.
        assert answer and answer.startswith(b"HTTP/1.1 408"), answer
        assert b'"request_timeout"' in answer


def test_a_connection_that_sends_nothing_is_closed(api):
    url = api(FT_HEADER_TIMEOUT="1", FT_KEEPALIVE_TIMEOUT="1")
    with connect(url) as silent, connect(url) as kept:
        kept.sendall(get("/openapi.json"))
        assert read_answer(kept)[0] == 200
        kept.settimeout(5)
        silent.settimeout(5)
        assert closed_by_server(silent)  # never sent a byte: closed after the header timeout
        assert closed_by_server(kept)  # idle after its answer: closed after the keep-alive timeout


# --- saturation: 503 overloaded with Retry-After -----------------------------------------------

ADMIN = {"FT_ADMIN_USERNAME": "door", "FT_ADMIN_PASSWORD": "front-door-password"}


def hold_a_request(url: str, token: str, file_id: str | None = None) -> socket.socket:
    """A request the API is busy with: a chunk whose body has not all arrived."""
    sock = connect(url)
    sock.sendall(
        f"POST /upload/{file_id or new_id('held')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/octet-stream\r\nContent-Range: bytes 0-999/1000\r\n"
        "Content-Length: 1012\r\n\r\n".encode()
        + chunk_body(b"\0" * 1000, 0)[:100]
    )
    return sock


def test_requests_over_the_inflight_limit_get_503_with_retry_after(api):
    url = api(FT_MAX_INFLIGHT="2", FT_OVERLOAD_RETRY_AFTER="3", FT_BODY_IDLE_TIMEOUT="60", **ADMIN)
    token = login(url, ADMIN["FT_ADMIN_USERNAME"], ADMIN["FT_ADMIN_PASSWORD"])
    held = [hold_a_request(url, token) for _ in range(2)]
    try:
        with connect(url) as sock:

            def overloaded():
                sock.sendall(get("/openapi.json"))
                return read_answer(sock)

            _status, headers, body = wait_until(
                lambda: (a := overloaded())[0] == 503 and a, timeout=10, what="a 503 while two requests are held"
            )
            assert headers["retry-after"] == "3"
            assert headers["content-type"] == "application/json"
            assert json.loads(body)["code"] == "overloaded"
            assert headers.get("connection") != "close"  # the connection stays usable
            for held_sock in held:
                held_sock.close()
            wait_until(lambda: overloaded()[0] == 200, timeout=10, what="service once the held requests ended")
    finally:
        for held_sock in held:
            held_sock.close()


def test_a_request_on_a_connection_over_the_limit_gets_503_and_a_close(api):
    url = api(FT_MAX_CONNECTIONS="3", FT_HEADER_TIMEOUT="30")
    idle = [connect(url) for _ in range(3)]
    try:
        with connect(url) as sock:

            def answer():
                sock.sendall(get("/openapi.json"))
                return read_answer(sock)

            status, headers, body = answer()
            assert status == 503, body
            assert json.loads(body)["code"] == "overloaded"
            assert headers["retry-after"] == "1" and headers["connection"] == "close"
            assert closed_by_server(sock)
        idle.pop().close()
        with connect(url) as sock:

            def served():
                sock.sendall(get("/openapi.json"))
                return read_answer(sock)[0] == 200

            assert wait_until(served, timeout=5, what="a request once a connection was freed")
    finally:
        for sock in idle:
            sock.close()


# --- a chunk body that stalls or trickles lets go of its range -----------------------------------


@pytest.mark.parametrize("how", ["stops", "trickles"])
def test_a_stalled_chunk_is_dropped_and_its_range_released(api, how):
    url = api(FT_BODY_IDLE_TIMEOUT="2", FT_BODY_MIN_RATE="2048", **ADMIN)
    token = login(url, ADMIN["FT_ADMIN_USERNAME"], ADMIN["FT_ADMIN_PASSWORD"])
    file_id = new_id("stall")
    payload = bytes(range(256)) * 64  # 16 KiB
    body = chunk_body(payload, 0)
    head = (
        f"POST /upload/{file_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Range: bytes 0-{len(payload) - 1}/{len(payload) * 2}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(url) as slow, httpx.Client(base_url=url, headers=bearer(token), timeout=10) as other:
        slow.sendall(head + body[:1000])
        # While the slow chunk holds bytes 0-..., the same range from another client is refused.
        wait_until(lambda: other.get(f"/status/{file_id}").status_code == 200, timeout=5, what="the slow chunk's claim")
        refused = send_chunk(other, url, token, file_id, payload * 2, 0, len(payload) - 1)
        assert refused.status_code == 409 and refused.json()["code"] == "overlap", refused.text
        slow.settimeout(10)
        sent = 1000
        if how == "trickles":  # 100 bytes every 0.1 s: ~1 KB/s, never idle for 2 s

            def trickle_answer():
                nonlocal sent
                slow.sendall(body[sent : sent + 100])
                sent += 100
                slow.settimeout(0.1)
                try:
                    return slow.recv(65536)
                except TimeoutError:
                    return None

            first = wait_until(trickle_answer, timeout=10, interval=0, what="the trickle to be cut")
            slow.settimeout(10)
            rest = b""
            while b"}" not in first + rest:
                rest += slow.recv(65536)
            status, headers, answer = read_answer(_Replay(first + rest))
        else:
            status, headers, answer = read_answer(slow)
        assert status == 408, answer
        assert json.loads(answer)["code"] == "body_timeout"
        assert headers["connection"] == "close"
        assert closed_by_server(slow)
        assert sent < len(body)
        # The claim was released at once: the same range now goes through.
        response = send_chunk(other, url, token, file_id, payload * 2, 0, len(payload) - 1)
        assert response.status_code == 200, response.text
        assert response.json()["received_bytes"] == len(payload)


class _Replay:
    """Bytes already read from a socket, offered again through recv()."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def recv(self, size: int) -> bytes:
        piece, self.data = self.data[:size], self.data[size:]
        return piece


# --- admission: chunks wait for a slot; a slow sender keeps its slot only for the lease ---------


@pytest.mark.parametrize("lease", ["60", "0.5"])
def test_chunks_on_every_slot_hold_the_next_one_back_for_their_lease_only(api, lease):
    """FT_CHUNK_SLOTS=2 with two chunks whose bodies stall in them: a third chunk waits while
    their leases last (60 s: still waiting after 2 s), and is stored once they end (0.5 s),
    while the two stalled bodies are still open (FT_BODY_IDLE_TIMEOUT=60 would cut them)."""
    url = api(FT_CHUNK_SLOTS="2", FT_CHUNK_SLOT_LEASE=lease, FT_BODY_IDLE_TIMEOUT="60", **ADMIN)
    token = login(url, ADMIN["FT_ADMIN_USERNAME"], ADMIN["FT_ADMIN_PASSWORD"])
    stalled_ids = [new_id("stalled") for _ in range(2)]
    stalled = []
    try:
        with httpx.Client(base_url=url, headers=bearer(token), timeout=20) as client:
            for file_id in stalled_ids:
                stalled.append(hold_a_request(url, token, file_id))
                # Its claim exists: it holds a slot, its body not all sent.
                wait_until(
                    lambda file_id=file_id: client.get(f"/status/{file_id}").status_code == 200,
                    timeout=10,
                    what="the stalled chunk's claim",
                )
            file_id, payload = new_id("next"), b"next chunk"
            if lease == "60":
                with httpx.Client(timeout=2) as impatient, pytest.raises(httpx.ReadTimeout):
                    send_chunk(impatient, url, token, file_id, payload, 0, len(payload) - 1)
            else:
                response = send_chunk(client, url, token, file_id, payload, 0, len(payload) - 1)
                assert response.status_code == 200, response.text
                for sock in stalled:  # still open, still unanswered
                    sock.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        sock.recv(1)
    finally:
        for sock in stalled:
            sock.close()
