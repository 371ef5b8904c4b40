"""GET /metrics and the request log on real stacks: uvicorn, Celery worker, redis-server."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import bearer, chunk_body, new_id, send_chunk, wait_for_state, wait_until

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str, token: str) -> Samples:
    r = httpx.get(f"{url}/metrics", headers=bearer(token), timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_metrics_need_an_admin_token(stack):
    r = httpx.get(f"{stack.url}/metrics")
    assert r.status_code == 401 and r.json()["code"] == "not_authenticated"
    r = httpx.get(f"{stack.url}/metrics", headers=bearer(stack.token()))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert httpx.get(f"{stack.url}/metrics", headers=bearer("x" * 40)).status_code == 401


def test_a_scraper_token_reads_metrics(make_stack):
    secret = "scraper-" + "s" * 32
    stack = make_stack(FT_METRICS_TOKEN=secret)
    assert httpx.get(f"{stack.url}/metrics", headers=bearer(secret)).status_code == 200
    assert httpx.get(f"{stack.url}/metrics", headers=bearer(secret[:-1] + "x")).status_code == 401


def test_metrics_move_with_uploads_downloads_and_failed_logins(stack):
    admin, user = stack.token("admin"), stack.token()
    data = os.urandom(300_000)
    file_id = new_id("metrics")
    before = scrape(stack.url, admin)
    with httpx.Client(timeout=30) as c:
        assert send_chunk(c, stack.url, user, file_id, data, 0, 99_999).status_code == 200
        assert send_chunk(c, stack.url, user, file_id, data, 0, 99_999).status_code == 200  # a retransmit
        assert send_chunk(c, stack.url, user, file_id, data, 50_000, 149_999).status_code == 409  # overlap
        bad = chunk_body(data[100_000:200_000], 100_000, crc=12345)
        r = c.post(
            f"{stack.url}/upload/{file_id}",
            content=bad,
            headers={**bearer(user), "Content-Range": f"bytes 100000-199999/{len(data)}"},
        )
        assert r.status_code == 400 and r.json()["code"] == "checksum_mismatch"
        assert send_chunk(c, stack.url, user, file_id, data, 100_000, 199_999).status_code == 200
        assert send_chunk(c, stack.url, user, file_id, data, 200_000, 299_999).status_code == 200
        wait_for_state(c, stack.url, user, file_id, states=("complete",))
        download = c.get(f"{stack.url}/download/{file_id}", headers=bearer(user))
        assert download.content == data
        ranged = c.get(f"{stack.url}/download/{file_id}", headers={**bearer(user), "Range": "bytes=0-999"})
        assert ranged.status_code == 206
        assert c.get(f"{stack.url}/no-such-page/{file_id}").status_code == 404
    assert httpx.post(f"{stack.url}/token", json={"username": "nobody", "password": "wrong"}).status_code == 401

    # The worker adds the assembly's duration just after it marked the file complete.
    after = wait_until(
        lambda: (
            (s := scrape(stack.url, admin))
            and moved(before, s, "ft_assembly_duration_seconds_count", outcome="complete") >= 1
            and s
        ),
        what="the assembly's duration in /metrics",
    )
    assert moved(before, after, "ft_chunks_total", result="stored") == 3
    assert moved(before, after, "ft_chunks_total", result="retransmit") == 1
    assert moved(before, after, "ft_chunks_total", result="overlap") == 1
    assert moved(before, after, "ft_chunks_total", result="checksum_mismatch") == 1
    upload = "/upload/{file_id}"
    assert moved(before, after, "ft_http_requests_total", method="POST", route=upload, status="200") == 4
    assert moved(before, after, "ft_http_requests_total", method="POST", route=upload, status="409") == 1
    assert (
        moved(before, after, "ft_http_request_duration_seconds_count", method="POST", route=upload, status="200") == 4
    )
    assert moved(before, after, "ft_received_bytes_total", route=upload) >= len(data)
    assert moved(before, after, "ft_served_bytes_total", route="/download/{file_id}") == len(data) + 1000
    assert moved(before, after, "ft_login_failures_total", reason="invalid_credentials") == 1
    for gauge in ("ft_uploads_incomplete", "ft_uploads_assembling", "ft_queue_depth"):
        assert (gauge, frozenset()) in after
    assert moved(before, after, "ft_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(after, "ft_redis_up") == 1
    assert not [key for key in after if any(file_id in v for _, v in key[1])], "a file id became a label"


def test_requests_answered_by_two_processes_are_summed(make_stack):
    stack = make_stack(FT_API_WORKERS="2")
    metrics_dir = stack.data_dir / "metrics"
    admin = stack.token("admin")
    sent = 0

    def both_processes_counted() -> bool:
        nonlocal sent
        with httpx.Client(timeout=10) as fresh:  # a new connection: either process may accept it
            assert fresh.get(f"{stack.url}/status/x", headers=bearer("bad")).status_code == 401
        sent += 1
        return len({p.name for p in metrics_dir.glob("counter_*.db")}) >= 2 and sent >= 10

    wait_until(both_processes_counted, timeout=60, what="requests answered by both API processes")
    for _ in range(4):  # whichever process answers the scrape, it reports both processes' counts
        samples = scrape(stack.url, admin)
        assert value(samples, "ft_http_requests_total", method="GET", route="/status/{file_id}", status="401") == sent


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_one_request_id_follows_an_upload_from_first_chunk_to_complete(make_stack):
    stack = make_stack(FT_LOG_FORMAT="json")
    user = stack.token()
    trace = f"trace-{uuid.uuid4().hex}"
    file_id = new_id("traced")
    data = os.urandom(200_000)
    with httpx.Client(timeout=30) as c:
        for start in (0, 100_000):
            r = send_chunk(c, stack.url, user, file_id, data, start, start + 99_999, X_Request_ID=trace)
            assert r.status_code == 200 and r.headers["x-request-id"] == trace
        wait_for_state(c, stack.url, user, file_id, states=("complete",))
        generated = c.get(f"{stack.url}/status/{file_id}", headers=bearer(user)).headers["x-request-id"]
        assert generated and generated != trace
        insane = c.get(f"{stack.url}/status/{file_id}", headers={**bearer(user), "X-Request-ID": 'a b"c'})
        assert insane.headers["x-request-id"] != 'a b"c'
        created = c.post(
            f"{stack.url}/files", headers={**bearer(user), "Tus-Resumable": "1.0.0", "Upload-Length": "10"}
        )
        assert created.status_code == 201
        tus_id = created.headers["location"].rstrip("/").rpartition("/")[2]
        patched = c.post(
            f"{stack.url}/files/{tus_id}",
            content=b"0123456789",
            headers={
                **bearer(user),
                "Tus-Resumable": "1.0.0",
                "X-HTTP-Method-Override": "PATCH",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204, patched.text

    api_log = next(stack.log_dir.glob("api-*.log"))
    # A request's line is written as its answer ends: the client may read the answer first.
    wait_until(
        lambda: any(line.get("request_id") == patched.headers["x-request-id"] for line in _json_lines(api_log)),
        what="the API's log line of the last request",
    )
    chunk_lines = [line for line in _json_lines(api_log) if line.get("request_id") == trace]
    assert len(chunk_lines) == 2
    assert all(
        line["route"] == "/upload/{file_id}"
        and line["file_id"] == file_id
        and line["status"] == 200
        and line["bytes_in"] == 100_012
        for line in chunk_lines
    )
    creation = [line for line in _json_lines(api_log) if line.get("request_id") == created.headers["x-request-id"]]
    assert [(line["route"], line["file_id"]) for line in creation] == [("/files", tus_id)]
    [patch] = [line for line in _json_lines(api_log) if line.get("request_id") == patched.headers["x-request-id"]]
    assert (patch["route"], patch["file_id"], patch["bytes_in"]) == ("/files/{file_id}", tus_id, 10)
    worker_log = stack.log_dir / "worker-w1.log"

    def assembly_line() -> dict | None:
        return next(
            (
                line
                for line in _json_lines(worker_log)
                if line.get("task") == "uploads.assemble" and line.get("file_id") == file_id
            ),
            None,
        )

    line = wait_until(assembly_line, what="the worker's log line of the assembly")
    assert line["request_id"] == trace and line["result"] == "complete" and line["state"] == "SUCCESS"
