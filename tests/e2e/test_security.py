"""Attacks and bad input over real HTTP (CONTRACT 2-4): forged tokens, hostile file ids and names,
oversized or lying requests, login brute force. Results are recorded in docs/RELIABILITY.md.

What tests/e2e/test_auth.py already covers (alg none, HS512, expired, missing claims, tampered
payload, removed user, per-user and per-address throttling) is not repeated here.

Hostile requests go out through raw sockets or http.client: httpx would normalise `..` away or
refuse to send what an attacker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import subprocess
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx
import jwt
import pytest

from core.file_ids import FILE_ID_PATTERN
from core.users import new_user_id
from ops.redis_server import free_port
from tests.support import (
    JWT_SECRET,
    bearer,
    chunk_body,
    new_id,
    read_answer,
    require_tool,
    send_chunk,
    start_api,
    wait_for_state,
    wait_until,
    wire_header,
)

MiB = 1024 * 1024


# --- helpers --------------------------------------------------------------------------------------


def _b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(stack, name: str, role: str = "user", **over) -> dict:
    """Claims that pass every check but the one a test breaks (`uid`: the user's real id)."""
    now = int(time.time())
    user = stack.users.get(name)
    uid = user.id if user else new_user_id()
    return {"sub": name, "uid": uid, "role": role, "iat": now, "exp": now + 600, "ver": 0, **over}


def _hmac_token(header: dict, claims: dict, key: bytes) -> str:
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class RawResponse:
    status: int | None  # None: the server closed the connection without an answer
    headers: dict[str, str]
    body: bytes


def raw_http(url: str, request: bytes, timeout: float = 15.0, chunk_size: int = 1 << 20) -> RawResponse:
    """Send bytes as they are and read one answer. A server that answers early and closes while
    we are still sending is fine: what it answered is read after the send fails."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            for offset in range(0, len(request), chunk_size):
                sock.sendall(request[offset : offset + chunk_size])
        except (BrokenPipeError, ConnectionResetError):
            pass
        return RawResponse(*read_answer(sock))


def upload_head(
    url: str, token: str, file_id: str, content_range: str, *, content_length: int | None, extra: str = ""
) -> bytes:
    head = (
        f"POST /upload/{file_id} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: {content_range}\r\n{extra}"
    )
    if content_length is not None:
        head += f"Content-Length: {content_length}\r\n"
    return (head + "\r\n").encode("latin-1")


def chunked(body: bytes, piece: int = 64 * 1024) -> bytes:
    """`Transfer-Encoding: chunked` framing."""
    out = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece]) for i in range(0, len(body), piece)
    )
    return out + b"0\r\n\r\n"


def assert_not_authenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def assert_still_healthy(stack) -> None:
    """/health is green and a normal upload goes through, right after an attack."""
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
    token = stack.token()
    data = os.urandom(4096)
    file_id = f"after-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        assert send_chunk(client, stack.url, token, file_id, data, 0, len(data) - 1).status_code == 200
        assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
    assert (stack.data_dir / "files" / file_id / "data").read_bytes() == data


def assert_no_tracebacks(stack, since: int) -> None:
    log = stack.api.log()[since:]
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]


def api_rss_kib(stack) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{stack.api.pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields


def reset_api_peak(stack) -> dict[str, int]:
    """Start the API's VmHWM again from its current RSS (`echo 5 > clear_refs`, as bench does)."""
    Path(f"/proc/{stack.api.pid}/clear_refs").write_text("5")
    memory = api_rss_kib(stack)
    assert memory["VmHWM"] - memory["VmRSS"] < 4 * 1024, f"the peak was not reset: {memory}"
    return memory


# --- JWT ------------------------------------------------------------------------------------------

# Every endpoint that needs a token, as (method, path): a forged token must be refused by each.
PROTECTED = [
    ("GET", "/status/some-file"),
    ("POST", "/upload/some-file"),
    ("DELETE", "/upload/some-file"),
    ("GET", "/download/some-file"),
    ("HEAD", "/download/some-file"),
    ("POST", "/cleanup"),
    ("GET", "/tasks/some-task"),
]


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory) -> tuple[Path, bytes]:
    """An RSA key pair made by openssl (the venv has no `cryptography`): (private key path, public PEM)."""
    openssl = require_tool("openssl")
    directory = tmp_path_factory.mktemp("rsa")
    private = directory / "key.pem"
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(private)],
        check=True,
        capture_output=True,
    )
    public = subprocess.run([openssl, "pkey", "-in", str(private), "-pubout"], check=True, capture_output=True).stdout
    return private, public


def _rs256_token(private_key: Path, claims: dict) -> str:
    signing_input = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(claims)}"
    signature = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", str(private_key)],
        input=signing_input.encode(),
        check=True,
        capture_output=True,
    ).stdout
    return f"{signing_input}.{_b64(signature)}"


def test_plain_rs256_token_is_refused(stack, rsa_key):
    private, _ = rsa_key
    name, _ = stack.add_user("admin")
    token = _rs256_token(private, _claims(stack, name, "admin"))
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert_not_authenticated(httpx.get(f"{stack.url}/status/x", headers=bearer(token)))


@pytest.mark.parametrize("alg", ["HS256", "RS256"])
def test_public_key_as_hmac_secret_is_refused(stack, rsa_key, alg):
    """The classic RS/HS confusion: the attacker HMAC-signs with the (public) RSA key."""
    _, public = rsa_key
    name, _ = stack.add_user("admin")
    token = _hmac_token({"alg": alg, "typ": "JWT"}, _claims(stack, name, "admin"), public)
    assert_not_authenticated(httpx.get(f"{stack.url}/status/x", headers=bearer(token)))


@pytest.mark.parametrize(
    "case",
    [
        "nbf_in_the_future",
        "iat_far_in_the_future",
        "sub_not_a_string",
        "unknown_role",
        "empty_signature",
        "kid_to_dev_null_with_empty_key",
        "embedded_jwk",
        "never_existed",
    ],
)
def test_forged_or_odd_tokens_are_refused(stack, case):
    name, _ = stack.add_user()
    now = int(time.time())

    def signed(claims: dict) -> str:
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    match case:
        case "nbf_in_the_future":
            token = signed(_claims(stack, name, nbf=now + 3600))
        case "iat_far_in_the_future":
            token = signed(_claims(stack, name, iat=now + 30 * 86400, exp=now + 31 * 86400))
        case "sub_not_a_string":
            token = signed(_claims(stack, name, sub=12345))
        case "unknown_role":
            token = signed(_claims(stack, name, role="root"))
        case "empty_signature":
            token = signed(_claims(stack, name)).rsplit(".", 1)[0] + "."
        case "kid_to_dev_null_with_empty_key":
            token = _hmac_token(
                {"alg": "HS256", "typ": "JWT", "kid": "../../../../dev/null"}, _claims(stack, name, "admin"), b""
            )
        case "embedded_jwk":
            key = b"attacker-chosen-key-0123456789abcdef"
            jwk = {"kty": "oct", "k": _b64(key)}
            token = _hmac_token({"alg": "HS256", "typ": "JWT", "jwk": jwk}, _claims(stack, name, "admin"), key)
        case "never_existed":
            token = signed(_claims(stack, f"ghost-{uuid.uuid4().hex[:8]}", "admin"))
    assert_not_authenticated(httpx.get(f"{stack.url}/status/x", headers=bearer(token)))


@pytest.mark.parametrize("method,path", PROTECTED)
def test_every_protected_endpoint_refuses_forged_tokens(stack, method, path):
    name, _ = stack.add_user("admin")
    forged = [
        None,
        f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(stack, name, 'admin'))}.",
        jwt.encode(_claims(stack, name, "admin"), "not-the-secret-not-the-secret-123", algorithm="HS256"),
        jwt.encode(_claims(stack, name, "admin", exp=int(time.time()) - 1), JWT_SECRET, algorithm="HS256"),
    ]
    with httpx.Client(timeout=10) as client:
        for token in forged:
            response = client.request(method, f"{stack.url}{path}", headers=bearer(token) if token else {})
            assert response.status_code == 401, (method, path, token, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            if method != "HEAD":
                assert response.json()["code"] == "not_authenticated"


def test_token_in_query_string_is_not_accepted(stack):
    token = stack.token()
    assert_not_authenticated(httpx.get(f"{stack.url}/status/x", params={"access_token": token}))
    assert_not_authenticated(httpx.get(f"{stack.url}/status/x", params={"token": token}))


def test_role_claim_does_not_outrank_the_user_store(stack):
    """A validly signed token whose `role` says admin, for a user who is not: still only a user."""
    name, _ = stack.add_user("user")
    token = jwt.encode(_claims(stack, name, "admin"), JWT_SECRET, algorithm="HS256")
    response = httpx.post(f"{stack.url}/cleanup", headers=bearer(token))
    assert response.status_code == 403 and response.json()["code"] == "forbidden"


# --- file_id: traversal and odd characters --------------------------------------------------------

HOSTILE_IDS = [
    "..",
    ".",
    "...",
    "%2e%2e",
    ".%2e",
    "%2e%2e%2f%2e%2e%2fsentinel.txt",
    "..%2Fsentinel.txt",
    "..%2F..%2Fsentinel.txt",
    "a%2Fb",
    "%2F",
    "..%5C..%5Csentinel.txt",
    "a%5Cb",
    "%252e%252e",
    "%00",
    "a%00b",
    "sentinel.txt%00.bin",
    "a%0D%0Ab",
    "a%20b",
    "a;b",
    "~root",
    "$HOME",
    "a*",
    "a" * 129,
    "a" * 20000,
    "%C3%BC",
    "%E2%80%AE",
    "%EF%BC%8E%EF%BC%8E",
    ".env",
    ".git",
    ".htaccess",
]
# (method, path template, needs a chunk body)
FILE_ENDPOINTS = [
    ("POST", "/upload/{}", True),
    ("DELETE", "/upload/{}", False),
    ("GET", "/status/{}", False),
    ("GET", "/download/{}", False),
    ("HEAD", "/download/{}", False),
]


def _tree(root: Path, skip: set[Path]) -> dict[str, tuple[int, int]]:
    """Every file and directory under `root` (except `skip`), with size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_hostile_file_ids_touch_nothing_outside_their_place(stack):
    token = stack.token()
    admin = stack.token("admin")  # an admin passes every ownership check: the most dangerous caller
    root = stack.data_dir.parent
    sentinels = [root / "sentinel.txt", stack.data_dir / "sentinel.txt"]
    sentinels[0].write_bytes(b"outside FT_DATA_DIR")
    sentinels[1].write_bytes(b"inside FT_DATA_DIR, outside files/ and staging/")
    try:
        _attack_with_hostile_ids(stack, token, admin, root)
    finally:
        for sentinel in sentinels:
            sentinel.unlink()


def _attack_with_hostile_ids(stack, token: str, admin: str, root: Path) -> None:
    skip = {stack.log_dir, stack.data_dir / "files", stack.data_dir / "staging"}
    users_db = re.compile(r"data/users\.sqlite3(-wal|-shm|-journal)?")
    before = {k: v for k, v in _tree(root, skip).items() if not users_db.fullmatch(k)}
    stored_before = {p.name for p in (stack.data_dir / "files").iterdir()} | {
        p.name for p in (stack.data_dir / "staging").iterdir()
    }

    parts = urlsplit(stack.url)
    answers = []
    for file_id in HOSTILE_IDS:
        for method, template, with_body in FILE_ENDPOINTS:
            for who in (token, admin):
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
                headers = {**bearer(who)}
                body = None
                if with_body:
                    body = chunk_body(b"pwned", 0)
                    headers |= {"Content-Range": "bytes 0-4/5", "Content-Type": "application/octet-stream"}
                conn.request(method, template.format(file_id), body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                answers.append((method, template, file_id, response.status))
                # uvicorn decodes an encoded `/`, so no route matches; every other id reaches one.
                status, code = (404, "not_found") if "%2f" in file_id.lower() else (400, "invalid_file_id")
                assert response.status == status, (method, template, file_id, response.status, payload[:200])
                if method != "HEAD":
                    assert json.loads(payload)["code"] == code, (method, template, file_id, payload[:200])
                assert b"outside FT_DATA_DIR" not in payload and b"inside FT_DATA_DIR" not in payload

    after = {k: v for k, v in _tree(root, skip).items() if not users_db.fullmatch(k)}
    assert after == before
    stored_after = {p.name for p in (stack.data_dir / "files").iterdir()} | {
        p.name for p in (stack.data_dir / "staging").iterdir()
    }
    assert stored_after == stored_before
    assert all(re.fullmatch(FILE_ID_PATTERN, name) for name in stored_after)
    # Ids that reach the handler are refused by the validator, not by luck: `..` itself is a 400.
    assert ("GET", "/status/{}", "..", 400) in answers and ("GET", "/status/{}", "%00", 400) in answers


# --- X-File-Name into Content-Disposition ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw_name",
    [
        "evil%0D%0ASet-Cookie%3A%20session%3Dstolen",
        "a%0Ab",
        "a%0Db",
        "a%00b",
        "a%09b",
        "a%7Fb",
        "%FF%FE",
        "%C3",
        "x" * 1100,
    ],
)
def test_file_names_with_control_characters_or_bad_encoding_are_refused(stack, raw_name):
    token = stack.token()
    file_id = f"name-{uuid.uuid4().hex[:8]}"
    with httpx.Client(timeout=30) as client:
        r = send_chunk(client, stack.url, token, file_id, b"0123456789", 0, 9, X_File_Name=raw_name)
        assert r.status_code == 400 and r.json()["code"] == "invalid_file_name", r.text
        assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).status_code == 404


@pytest.mark.parametrize(
    "name",
    [
        'evil"; filename="evil.sh',
        "a;b;c",
        'quote"in"side',
        "back\\slash",
        "../../etc/passwd",
        "C:\\Windows\\system32\\cmd.exe",
        "%2e%2e%2f",
        "\u202egnp.exe",
        "名前 with spaces.txt",
        "percent%20literal",
        "=?utf-8?q?encoded?=",
    ],
)
def test_hostile_file_names_are_safely_encoded_in_content_disposition(stack, name):
    token = stack.token()
    file_id = f"name-{uuid.uuid4().hex[:8]}"
    data = os.urandom(100)
    with httpx.Client(timeout=30) as client:
        r = send_chunk(client, stack.url, token, file_id, data, 0, 99, X_File_Name=quote(name, safe=""))
        assert r.status_code == 200, r.text
        assert wait_for_state(client, stack.url, token, file_id)["state"] == "complete"
        assert client.get(f"{stack.url}/status/{file_id}", headers=bearer(token)).json()["file_name"] == name
        response = client.get(f"{stack.url}/download/{file_id}", headers=bearer(token))
    assert response.status_code == 200 and response.content == data
    disposition = response.headers["content-disposition"]
    match = re.fullmatch(
        r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'([A-Za-z0-9!#$&+.^_`|~%-]*)', disposition
    )
    assert match, disposition
    fallback, encoded = match.groups()
    assert unquote(encoded, errors="strict") == name
    assert fallback.isascii() and not set(fallback) & set('";/\\%\r\n')
    # The raw bytes on the wire: one header line, nothing injected.
    assert not [k for k in response.headers if k.lower() == "set-cookie"]


# --- oversized and lying requests -----------------------------------------------------------------


def test_oversized_heads_are_refused_with_431_json(stack):
    """The request head is capped (api/http_protocol.py): 1 MiB values, 20,000 headers or a 1 MiB
    URL get 431 with the JSON error body, never a 5xx, and the service stays healthy."""
    since = len(stack.api.log())
    token = stack.token()
    big = "a" * MiB
    for request in (
        f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n",
        f"GET /status/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-Big: {big}\r\n\r\n",
        f"GET /status/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {big}\r\n\r\n",
        f"GET /status/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nX-File-Name: {big}\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-H{i}: v\r\n" for i in range(20000)) + "\r\n",
        f"GET /status/{'a' * MiB} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n",
    ):
        answer = raw_http(stack.url, request.encode())
        if answer.status is not None:  # the server may close while we are still sending
            assert answer.status == 431, answer
            assert json.loads(answer.body)["code"] == "request_header_too_large"
    assert_still_healthy(stack)
    assert_no_tracebacks(stack, since)


def test_a_huge_header_is_refused_before_it_is_buffered(stack):
    before = reset_api_peak(stack)
    answer = raw_http(stack.url, f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * (64 * MiB)}\r\n\r\n".encode())
    assert answer.status is None or answer.status == 431, answer
    # Buffering it would cost at least 64 MiB at the peak, even if freed since; the cap keeps it
    # to one socket read. The peak (VmHWM), not the RSS after the fact, is what is compared.
    peak_growth_kib = api_rss_kib(stack)["VmHWM"] - before["VmRSS"]
    assert peak_growth_kib < 16 * 1024, f"the API's peak grew by {peak_growth_kib} KiB"
    assert_still_healthy(stack)


def test_framing_errors_answer_json(stack):
    for head in (
        "POST /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "POST /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        answer = raw_http(stack.url, head.encode())
        assert answer.status == 400, answer
        assert answer.headers["content-type"] == "application/json"
        assert json.loads(answer.body)["code"] == "bad_request"


def assert_refused(answer: RawResponse, code: str) -> None:
    assert answer.status == 400, answer
    assert answer.headers["content-type"] == "application/json", answer
    assert json.loads(answer.body)["code"] == code, answer


def test_bodies_that_do_not_match_their_framing(stack):
    """Longer than Content-Range, Content-Length lying both ways, chunked without Content-Length:
    the documented 400 and code for each (docs/RELIABILITY.md), nothing stored, and the service
    stays healthy."""
    since = len(stack.api.log())
    token = stack.token()
    payload = os.urandom(1000)
    body = chunk_body(payload, 0)
    url = stack.url
    cr = "bytes 0-999/2000"
    refused = {}

    def status_of(file_id):
        return httpx.get(f"{url}/status/{file_id}", headers=bearer(token)).status_code

    # Body longer than Content-Range promises (Content-Length honest about it).
    fid = new_id("longer")
    answer = raw_http(url, upload_head(url, token, fid, cr, content_length=len(body) + 500) + body + b"x" * 500)
    refused["longer than Content-Range"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404

    # The same, with a header that also claims the longer range (and a CRC over all of it).
    fid = new_id("longer-hdr")
    longer = payload + b"x" * 500
    answer = raw_http(
        url,
        upload_head(url, token, fid, cr, content_length=12 + len(longer))
        + wire_header(0, 999, zlib.crc32(longer))
        + longer,
    )
    refused["longer, header agrees with Content-Range"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404

    # Content-Length smaller than the body: the rest would be a second, garbage request.
    fid = new_id("cl-small")
    answer = raw_http(url, upload_head(url, token, fid, cr, content_length=500) + body)
    refused["Content-Length < body"] = answer
    assert_refused(answer, "bad_request")  # the rest of the body parsed as a malformed request
    assert status_of(fid) == 404

    # Content-Length larger than the body; the client then waits: refused at once, before reading.
    fid = new_id("cl-large")
    answer = raw_http(url, upload_head(url, token, fid, cr, content_length=len(body) + 4096) + body)
    refused["Content-Length > body"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404

    # Content-Length absurd or not a number.
    for label, value in (
        ("Content-Length 2^63", str(2**63)),
        ("Content-Length -1", "-1"),
        ("Content-Length abc", "abc"),
    ):
        fid = new_id("cl-odd")
        answer = raw_http(
            url, upload_head(url, token, fid, cr, content_length=None, extra=f"Content-Length: {value}\r\n") + body
        )
        refused[label] = answer
        assert_refused(answer, "length_mismatch" if value == str(2**63) else "bad_request")
        assert status_of(fid) == 404

    # Both Content-Length and Transfer-Encoding (a smuggling shape): refused.
    fid = new_id("cl-te")
    answer = raw_http(
        url, upload_head(url, token, fid, cr, content_length=5, extra="Transfer-Encoding: chunked\r\n") + chunked(body)
    )
    refused["Content-Length and chunked"] = answer
    assert_refused(answer, "bad_request")
    assert status_of(fid) == 404

    # Chunked transfer encoding without Content-Length: exact, too long, too short.
    te = "Transfer-Encoding: chunked\r\n"
    fid = new_id("te-ok")
    answer = raw_http(url, upload_head(url, token, fid, cr, content_length=None, extra=te) + chunked(body))
    assert answer.status == 200, answer  # a well-formed chunked upload is fine
    fid = new_id("te-long")
    answer = raw_http(url, upload_head(url, token, fid, cr, content_length=None, extra=te) + chunked(body + b"x" * 100))
    refused["chunked, longer"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404
    fid = new_id("te-short")
    answer = raw_http(
        url,
        upload_head(url, token, fid, cr, content_length=None, extra=te)
        + chunked(wire_header(0, 999, zlib.crc32(payload)) + payload[:600]),
    )
    refused["chunked, shorter"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404

    # 64 MiB of chunked body for a 1000-byte range: cut off early, nothing written past the range.
    fid = new_id("te-flood")
    flood = body + b"\0" * (64 * MiB)
    answer = raw_http(
        url, upload_head(url, token, fid, cr, content_length=None, extra=te) + chunked(flood, MiB), timeout=60
    )
    refused["chunked, 64 MiB flood"] = answer
    assert_refused(answer, "length_mismatch")
    assert status_of(fid) == 404
    staged = stack.data_dir / "staging" / fid / "data"
    assert not staged.exists() or (staged.stat().st_size <= 2000 and staged.stat().st_blocks * 512 <= 64 * 1024)

    print("\n".join(f"{k}: {v.status} {v.body[:100]!r}" for k, v in refused.items()))
    assert_still_healthy(stack)
    assert_no_tracebacks(stack, since)


def test_client_dropping_mid_chunk_loses_only_that_chunk_and_logs_no_traceback(stack):
    since = len(stack.api.log())
    token = stack.token()
    data = os.urandom(2000)
    fid = new_id("drop")
    with httpx.Client(timeout=30) as client:
        assert send_chunk(client, stack.url, token, fid, data, 0, 999).status_code == 200
    body = chunk_body(data[1000:], 1000)
    parts = urlsplit(stack.url)
    for how in ("half-close", "close"):
        sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        sock.sendall(upload_head(stack.url, token, fid, "bytes 1000-1999/2000", content_length=len(body)) + body[:600])
        if how == "half-close":
            sock.shutdown(socket.SHUT_WR)
            sock.recv(100)  # the server closes; nothing to answer to
        sock.close()

    def released():
        status = httpx.get(f"{stack.url}/status/{fid}", headers=bearer(token)).json()
        return status if status["missing_ranges"] == [[1000, 1999]] else None

    status = wait_until(released, timeout=15, what="the dropped chunk to be released")
    assert status["received_bytes"] == 1000
    with httpx.Client(timeout=30) as client:
        # Resumable: the same range is accepted again (once the server has noticed the drop).
        wait_until(
            lambda: send_chunk(client, stack.url, token, fid, data, 1000, 1999).status_code == 200,
            timeout=15,
            interval=0.2,
            what="the dropped range to be accepted again",
        )
        assert wait_for_state(client, stack.url, token, fid)["state"] == "complete"
    assert (stack.data_dir / "files" / fid / "data").read_bytes() == data
    assert_no_tracebacks(stack, since)


# --- brute force on /token ------------------------------------------------------------------------


def test_throttled_login_says_when_to_retry_and_works_after_the_window(make_stack):
    # The window must outlast three Argon2 logins on a loaded machine, or the block never starts.
    window = 5
    private = make_stack(FT_LOGIN_WINDOW=str(window), FT_LOGIN_MAX_FAILURES="3")
    name, password = private.add_user()
    url = f"{private.url}/token"
    statuses = [httpx.post(url, json={"username": name, "password": "wrong"}).status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    blocked = httpx.post(url, json={"username": name, "password": password})
    assert blocked.status_code == 429 and blocked.json()["code"] == "too_many_attempts"
    retry_after = int(blocked.headers["retry-after"])
    assert 1 <= retry_after <= window
    # The right password goes through again once the window has passed (a deadline, not a sleep;
    # how soon is not asserted: that would be a wall-clock figure).
    ok = wait_until(
        lambda: (r := httpx.post(url, json={"username": name, "password": password})).status_code == 200 and r,
        timeout=retry_after + 60,
        interval=0.2,
        what="login to work again after the window",
    )
    assert httpx.get(f"{private.url}/status/x", headers=bearer(ok.json()["access_token"])).status_code == 404


def test_health_503_is_an_error_body_too(tmp_path, redis_server):
    """CONTRACT 2: every 4xx/5xx has `code` and `detail`, /health's 503 included."""
    api, url = start_api(tmp_path / "data", f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    try:
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503
        body = health.json()
        assert body["code"] == "unavailable" and body["detail"] and body["redis"] != "ok" and body["workers"] == 0
    finally:
        api.stop()
