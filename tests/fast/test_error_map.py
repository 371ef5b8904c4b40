"""The one error map (api/errors.py): every domain error of core/errors.py has an HTTP status,
and every status/code pair answers the contract's JSON shape with the headers that go with it."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import fakeredis
import pytest
from fastapi.testclient import TestClient

from api.errors import STATUS_BY_ERROR
from core import errors
from tests.fast.inprocess import InProcessWorker, fast_settings, in_process_client

DOMAIN_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.TransferError) and cls.__module__ == errors.__name__
]
# Bases that are never raised themselves: they carry no code of their own.
ABSTRACT = {errors.TransferError, errors.RetryLater}
CONCRETE = [cls for cls in DOMAIN_ERRORS if cls not in ABSTRACT]
RETRY_AFTER = 7


def raised(cls: type[errors.TransferError]) -> errors.TransferError:
    detail = f"a {cls.__name__} for the test"
    if issubclass(cls, (errors.RetryLater, errors.TooManyAttempts)):
        return cls(detail, retry_after=RETRY_AFTER)
    return cls(detail)


def test_only_the_bases_have_no_code_of_their_own():
    assert {cls for cls in DOMAIN_ERRORS if cls.code == errors.TransferError.code} == ABSTRACT


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda cls: cls.__name__)
def test_every_domain_error_has_a_status(cls):
    assert cls in STATUS_BY_ERROR, f"{cls.__name__} is not in api/errors.py STATUS_BY_ERROR"
    assert 400 <= STATUS_BY_ERROR[cls] < 600


def test_the_map_names_no_other_class():
    assert set(STATUS_BY_ERROR) <= set(CONCRETE)


@pytest.fixture(scope="module")
def raising_client(tmp_path_factory) -> Iterator[TestClient]:
    """The app, with one more route that raises the domain error named in its path; one for the
    module, as nothing here changes its state."""
    by_name = {cls.__name__: cls for cls in CONCRETE}

    async def raise_error(name: str):
        exc = raised(by_name[name])
        exc.extra["next_expected_byte"] = 12
        raise exc

    settings = fast_settings(tmp_path_factory.mktemp("error-map"))
    server = fakeredis.FakeServer()
    worker = InProcessWorker(settings, server)
    try:
        with in_process_client(settings, server, worker) as client:
            client.app.add_api_route("/test-only/raise/{name}", raise_error)
            yield client
    finally:
        worker.close()


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda cls: cls.__name__)
def test_each_error_answers_its_status_and_the_json_shape(raising_client, cls):
    answer = raising_client.get(f"/test-only/raise/{cls.__name__}")
    status = STATUS_BY_ERROR[cls]
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"code": cls.code, "detail": f"a {cls.__name__} for the test", "next_expected_byte": 12}
    assert cls.code.islower() and " " not in cls.code
    if cls is errors.NotAuthenticated:
        assert answer.headers["www-authenticate"] == "Bearer"
    if issubclass(cls, (errors.RetryLater, errors.TooManyAttempts)):
        assert answer.headers["retry-after"] == str(RETRY_AFTER)
    if status == 503:
        assert answer.headers["retry-after"] == str(raising_client.app.state.settings.unavailable_retry_after)
    if status == 412:
        assert answer.headers["tus-version"] == "1.0.0"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no-such-route", 404, "not_found"),
        ("PUT", "/upload/x", 405, "method_not_allowed"),
        ("GET", "/files?limit=abc", 400, "invalid_request"),
    ],
)
def test_framework_errors_answer_the_same_shape(client, alice, method, path, status, code):
    answer = client.request(method, path, headers=alice.headers)
    assert answer.status_code == status
    assert answer.json()["code"] == code and isinstance(answer.json()["detail"], str)
    if status == 405:
        assert set(answer.headers["allow"].split(", ")) == {"POST", "DELETE"}
