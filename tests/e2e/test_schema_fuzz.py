"""Schemathesis against the running app's /openapi.json: no 5xx, and every answer as documented.

Driven through schemathesis' CLI in a subprocess (its pytest plugin and our session fixtures
do not mix well), against the real uvicorn of the `stack` fixture, with a user's token.
Bounded: at most 50 examples per operation and phase, with a fixed seed; ~20 s.

Checks: all of schemathesis' checks (no server error, status codes, content types, headers
and bodies as documented, negative data rejected, auth not ignored, Allow on 405, ...), except
`positive_data_acceptance` for POST /upload: a schema cannot say that the body's CRC-32 must
match, so a schema-valid chunk is still refused with 400 most of the time. For downloads that
check accepts 412 and 416 too: a schema-valid If-Match or Range may well not hold.

So that the fuzzer reaches more than 404s, the file_id of GET /status and GET/HEAD /download
is drawn half of the time from real uploads: a complete file of the user's (ranges and
conditionals are then fuzzed against real bytes), one in progress, and another user's.
The admin operations are fuzzed with an admin token on a private stack: their cleanup, with
random `older_than`, would remove other tests' uploads on the shared one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import httpx
import pytest
import schemathesis  # noqa: F401 - pinned in requirements-dev.txt: missing is an error, not a skip

from tests.support import send_chunk, wait_for_state

# schemathesis' default statuses for a schema-violating request.
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]
MAX_EXAMPLES = 50
SEED = 20240531
TIMEOUT = 240  # seconds; the runs take ~20 s


def _toml(value) -> str:
    """A TOML value from a str, number, bool, list or dict (inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


def _config(token: str, operations: list[dict], dictionaries: dict[str, list[str]] | None = None) -> str:
    lines = [
        f"seed = {SEED}",
        "continue-on-failure = true",
        f"headers = {_toml({'Authorization': f'Bearer {token}'})}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        "[checks]",
        "enabled = true",
    ]
    for name, values in (dictionaries or {}).items():
        lines += [f"[dictionaries.{name}]", f"values = {_toml(values)}"]
    for operation in operations:
        lines.append("[[operations]]")
        lines += [f"{key} = {_toml(value)}" for key, value in operation.items()]
    return "\n".join(lines) + "\n"


def run_schemathesis(
    stack, tmp_path, token: str, operations: list[dict], *filters: str, dictionaries: dict[str, list[str]] | None = None
) -> subprocess.CompletedProcess:
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(token, operations, dictionaries))
    report = tmp_path / "report"
    args = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{stack.url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--request-timeout",
        "30",
        "--workers",
        "2",
        "--report",
        "junit",
        "--report-dir",
        str(report),
        *filters,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)


def _failures(result: subprocess.CompletedProcess) -> str:
    out = result.stdout + result.stderr
    start = out.find("= FAILURES =")
    return out[start - 40 :] if start >= 0 else out[-8000:]


def _assert_api_healthy(stack, since: int = 0) -> None:
    """Healthy, and no traceback in the API log from `since` on (the shared stack's log also
    holds what earlier tests did to it: only this test's part is its business)."""
    assert httpx.get(f"{stack.url}/health", timeout=10).status_code == 200
    log = stack.api.log()[since:]
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]


@pytest.fixture(scope="module")
def known_ids(stack):
    """Real uploads for the fuzzer to hit: the token's owner has a complete and a partial one;
    another user has a complete one (which must stay out of reach: 404)."""
    token, foreign_token = stack.token(), stack.token()
    data = os.urandom(64 * 1024 + 7)
    suffix = uuid.uuid4().hex[:8]
    complete, partial, foreign = f"fz-done-{suffix}", f"fz-part-{suffix}", f"fz-foreign-{suffix}"
    with httpx.Client(timeout=30) as client:
        r = send_chunk(client, stack.url, token, complete, data, 0, len(data) - 1, X_File_Name="fuzz%20%22me%22%3B.bin")
        assert r.status_code == 200, r.text
        assert send_chunk(client, stack.url, token, partial, data, 0, 999).status_code == 200
        assert send_chunk(client, stack.url, foreign_token, foreign, data, 0, 99, total=100).status_code == 200
        assert wait_for_state(client, stack.url, token, complete)["state"] == "complete"
        assert wait_for_state(client, stack.url, foreign_token, foreign)["state"] == "complete"
    return token, [complete, partial, foreign], data


def test_user_operations_conform_and_never_fail(stack, tmp_path, known_ids):
    token, ids, data = known_ids
    since = len(stack.api.log())
    operations = [
        {
            "include-path-regex": "^/(status|download|files)/",
            "parameters": {"path.file_id": {"dictionary": "file_ids", "probability": 0.5}},
        },
        {
            "include-path": "/upload/{file_id}",
            "include-method": "POST",
            "checks": {"positive_data_acceptance": {"enabled": False}},
        },
        # Downloads; /files/{file_id} is a download (GET) and tus (HEAD, PATCH, DELETE), whose
        # schema-valid requests may get 400, 413, 415 or 460 (see the tus entry below).
        {
            "include-path-regex": "^/(download|files)/\\{file_id\\}$",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        "2xx",
                        "3xx",
                        "400",
                        "401",
                        "403",
                        "404",
                        "409",
                        "412",
                        "413",
                        "415",
                        "416",
                        "460",
                    ]
                }
            },
        },
        # tus answers a missing or wrong Tus-Resumable with 412 (its protocol says so), and a
        # schema cannot say that Upload-Length and Upload-Defer-Length exclude each other or
        # that a checksum must match the body, and the schema leaves the PATCH body out (OpenAPI
        # tools cannot send application/offset+octet-stream): schema-valid requests may get 400,
        # 413, 415 or 460.
        {
            "include-path-regex": "^/files",
            "checks": {
                "negative_data_rejection": {"expected-statuses": [*REJECTIONS, "412", "413"]},
                "missing_required_header": {"expected-statuses": ["400", "401", "412"]},
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "415", "460"]
                },
            },
        },
        # A cursor is opaque: a well-formed string this server never handed out is refused (400).
        {
            "include-path": "/files",
            "include-method": "GET",
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]}},
        },
    ]
    result = run_schemathesis(
        stack, tmp_path, token, operations, "--exclude-tag", "admin", dictionaries={"file_ids": ids}
    )
    assert result.returncode == 0, _failures(result)
    _assert_api_healthy(stack, since)
    # DELETE is fuzzed too, but never reached the other user's file.
    assert (stack.data_dir / "files" / ids[2] / "data").read_bytes() == data[:100]


def test_admin_operations_conform_and_never_fail(make_stack, tmp_path):
    private = make_stack()
    result = run_schemathesis(private, tmp_path, private.token("admin"), [], "--include-tag", "admin")
    assert result.returncode == 0, _failures(result)
    _assert_api_healthy(private)


def test_schema_documents_what_the_api_answers(stack):
    """Spot checks of the schema fixes the fuzzer drove: no 422 (validation errors are 400
    invalid_request), JSON error bodies, required headers, unique operation ids, file_id pattern."""
    schema = httpx.get(f"{stack.url}/openapi.json").json()
    operation_ids = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            for status, response in responses.items():
                if status[0] in "45":
                    assert "application/json" in response.get("content", {}), (method, path, status)
            if operation.get("security"):
                assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "file_id":
                    assert re.fullmatch(parameter["schema"]["pattern"].strip("^$"), "a.b-c_9")
                    assert not re.fullmatch(parameter["schema"]["pattern"].strip("^$"), ".env")
    assert len(operation_ids) == len(set(operation_ids))
    download = schema["paths"]["/download/{file_id}"]["get"]["responses"]
    assert download["416"]["headers"]["Content-Range"]["required"] is True
    assert schema["paths"]["/token"]["post"]["responses"]["429"]["headers"]["Retry-After"]["required"] is True
