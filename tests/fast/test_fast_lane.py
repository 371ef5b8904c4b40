"""The fast lane (api/fast_lane.py) serves POST /upload/{file_id} and tus PATCH /files/{file_id}
without FastAPI's routing: every answer must be the one the FastAPI routes give. The same
requests go to two apps, one with the lane and one without, each on its own fake Redis and data
directory; statuses, bodies and headers must agree (the request id and the date aside)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import fakeredis
import pytest
from fastapi.testclient import TestClient

import api.admission
import api.fast_lane
from api.main import create_app
from tests.fast.conftest import Account
from tests.fast.inprocess import InProcessWorker, fast_settings, in_process_client
from tests.support import chunk_body

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
VOLATILE = {"date", "x-request-id", "upload-expires"}  # upload-expires: kept only as present or not
DATA = b"hello world\n"


def _ours(client, alice: Account, bob: Account) -> list:
    def post(path: str, body: bytes, **headers: str):
        return client.post(path, content=body, headers={"Content-Type": "application/octet-stream", **headers})

    auth = alice.headers
    first, second = chunk_body(DATA[:6], 0), chunk_body(DATA[6:], 6)
    return [
        post("/upload/notes", first, **{"Content-Range": "bytes 0-5/12"}),  # no token
        post("/upload/notes", first, **{"Content-Range": "bytes 0-5/12", "Authorization": "Bearer nonsense"}),
        post("/upload/notes", first, **{"Content-Range": "bytes 0-5/12", "Authorization": "Basic YTpi"}),
        post("/upload/notes", first, **auth, **{"Content-Range": "bytes 0-5/12"}),
        post("/upload/notes", first, **auth, **{"Content-Range": "bytes 0-5/12"}),  # a retransmit
        post("/upload/notes", chunk_body(DATA[3:9], 3), **auth, **{"Content-Range": "bytes 3-8/12"}),  # overlap
        post("/upload/notes", second, **bob.headers, **{"Content-Range": "bytes 6-11/12"}),  # not bob's
        post("/upload/notes", second, **auth, **{"Content-Range": "bytes six-11/12"}),
        post("/upload/notes", second + b"x", **auth, **{"Content-Range": "bytes 6-11/12"}),
        post("/upload/notes", chunk_body(DATA[6:], 6, crc=1), **auth, **{"Content-Range": "bytes 6-11/12"}),
        post("/upload/.hidden", first, **auth, **{"Content-Range": "bytes 0-5/12"}),
        post("/upload/notes", first, **auth, **{"Content-Range": "bytes 0-5/12", "X-File-SHA256": "nope"}),
        post("/upload/a/b", first, **auth, **{"Content-Range": "bytes 0-5/12"}),  # not the lane's: 404
        client.get("/upload/notes", headers=auth),  # not the lane's: 405
        post("/upload/notes", second, **auth, **{"Content-Range": "bytes 6-11/12"}),  # the last bytes
    ]


def _tus(client, alice: Account) -> list:
    created = client.post("/files/", headers={**alice.headers, **TUS, "Upload-Length": str(len(DATA))})
    path = "/files/" + created.headers["location"].rsplit("/", 1)[1]

    def patch(body: bytes, offset: int, **headers: str):
        return client.patch(
            path, content=body, headers={**alice.headers, **PATCH, "Upload-Offset": str(offset), **headers}
        )

    return [
        client.patch(path, content=DATA, headers={**PATCH, "Upload-Offset": "0"}),  # no token
        patch(DATA, 0, **{"Tus-Resumable": "0.2.2"}),
        patch(DATA, 0, **{"Content-Type": "application/octet-stream"}),
        patch(DATA, 5),
        patch(DATA[:4], 0, **{"Upload-Checksum": "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA="}),
        patch(DATA[:4], 0, **{"Upload-Checksum": "md4 AAAA"}),
        patch(DATA[:4], 0),
        client.post(  # tus's method override: PATCH sent as POST
            path,
            content=DATA[4:],
            headers={**alice.headers, **PATCH, "Upload-Offset": "4", "X-HTTP-Method-Override": "PATCH"},
        ),
        # Nothing after the last bytes: the stand-in worker completes the file when it gets to
        # it, and a complete upload's answers differ (no Upload-Expires).
    ]


def _comparable(answer) -> tuple:
    headers = sorted((name, value) for name, value in answer.headers.items() if name not in VOLATILE)
    return answer.status_code, answer.text, headers, "upload-expires" in answer.headers


def _answers(tmp_path, users_template, fast_lane: bool, monkeypatch) -> tuple[list, int]:
    settings = fast_settings(tmp_path / ("lane" if fast_lane else "routes"))
    settings.data_dir.mkdir(parents=True)
    with closing(sqlite3.connect(users_template[0])) as source, closing(sqlite3.connect(settings.users_db)) as copy:
        source.backup(copy)
    accounts = users_template[1]
    served = []
    real = api.fast_lane.request_user

    async def counting(request):
        served.append(request.url.path)
        return await real(request)

    monkeypatch.setattr(api.fast_lane, "request_user", counting)
    server = fakeredis.FakeServer()
    worker = InProcessWorker(settings, server)
    try:
        with in_process_client(settings, server, worker, fast_lane=fast_lane) as client:
            answers = _ours(client, accounts["alice"], accounts["bob"]) + _tus(client, accounts["alice"])
    finally:
        worker.close()
    return [_comparable(answer) for answer in answers], len(served)


def test_the_lane_answers_as_the_routes_do(tmp_path, users_template, monkeypatch):
    with_lane, through_lane = _answers(tmp_path, users_template, True, monkeypatch)
    without_lane, through_routes = _answers(tmp_path, users_template, False, monkeypatch)
    assert through_routes == 0
    # Every answer compared but the two that are not the lane's (a path of two segments, a GET)
    # came through it.
    assert through_lane == len(with_lane) - 2
    statuses = [answer[0] for answer in with_lane]
    assert {200, 400, 401, 404, 405, 409, 412, 415, 204, 460} <= set(statuses), statuses
    for index, (lane, routes) in enumerate(zip(with_lane, without_lane, strict=True)):
        assert lane == routes, f"request {index}"


@pytest.mark.parametrize("path", ["/upload/", "/files/"])
def test_an_error_without_a_handler_is_still_the_500_of_every_route(client, alice, monkeypatch, path):
    async def broken(request, user, file_id):
        raise RuntimeError("a bug")

    lane = "upload" if path == "/upload/" else "files"
    stack = client.app.middleware_stack
    while not isinstance(stack, api.fast_lane.FastLane):
        stack = stack.app
    method = "POST" if lane == "upload" else "PATCH"
    monkeypatch.setitem(stack._lanes, method, api.fast_lane.Lane(method, path, broken))
    served = TestClient(client.app, raise_server_exceptions=False)  # as uvicorn: the answer, not the exception
    answer = served.request(method, path + "x", headers=alice.headers, content=b"")
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal_error"


@pytest.mark.parametrize("slots", [0, 5])
@pytest.mark.parametrize("fast_lane", [True, False])
def test_ft_chunk_slots_admits_the_requests_that_carry_upload_bytes(tmp_path, slots, fast_lane):
    """FT_CHUNK_SLOTS reaches the admission (api/admission.py), with the fast lane or without;
    0 leaves the app without one. It admits chunks, tus PATCHes and tus creations only."""
    settings = fast_settings(tmp_path).model_copy(update={"chunk_slots": slots, "chunk_slot_lease": 2.5})
    app = create_app(settings, make_redis=lambda _: fakeredis.FakeAsyncRedis(), fast_lane=fast_lane)
    found = [m for m in app.user_middleware if m.cls is api.admission.AdmissionMiddleware]
    if slots == 0:
        assert found == []
        return
    (middleware,) = found
    admission = middleware.kwargs["admission"]
    assert (admission._free._value, admission._lease) == (5, 2.5)
    admitting = api.admission.AdmissionMiddleware(app, admission, middleware.kwargs["routes"])
    for method, path in (("POST", "/upload/a"), ("PATCH", "/files/a"), ("POST", "/files"), ("POST", "/files/")):
        assert admitting._admits(method, path), (method, path)
    for method, path in (
        ("GET", "/upload/a"),
        ("POST", "/upload/"),
        ("POST", "/upload/a/b"),
        ("HEAD", "/files/a"),
        ("POST", "/files/a"),
        ("GET", "/files"),
        ("POST", "/login"),
    ):
        assert not admitting._admits(method, path), (method, path)
