"""core/tokens.py: a decoded token is remembered, and remembering it never lets through a
token that decoding would refuse (expired, another key, altered)."""

from __future__ import annotations

import time

import pytest

from core.errors import NotAuthenticated
from core.tokens import decode_token, issue_token
from core.users import UserStore
from tests.support import wait_until

SECRET = "unit-test-secret-0123456789abcdef0123"
OTHER_SECRET = "another-secret-0123456789abcdef012345"


@pytest.fixture
def user(tmp_path):
    return UserStore(tmp_path / "users.sqlite3").set("erin", "pw")


def refused(token: str, secret: str = SECRET) -> bool:
    try:
        decode_token(token, secret)
    except NotAuthenticated:
        return True
    return False


def test_a_remembered_token_is_refused_once_it_expires(user):
    # Issued so that it expires about a second from now; decoded (and remembered) while valid.
    token = issue_token(user, SECRET, 60, now=time.time() - 59)
    first = decode_token(token, SECRET)
    assert decode_token(token, SECRET) == first
    wait_until(lambda: refused(token), timeout=5, what="the remembered token to expire")
    assert refused(token)  # and stays refused: the expired entry is gone, decoding refuses it


def test_a_remembered_token_does_not_work_under_another_key(user):
    token = issue_token(user, SECRET, 60)
    assert decode_token(token, SECRET).uid == user.id
    assert refused(token, OTHER_SECRET)


def test_an_altered_copy_of_a_remembered_token_is_refused(user):
    token = issue_token(user, SECRET, 60)
    decode_token(token, SECRET)
    head, payload, signature = token.split(".")
    altered = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert refused(altered)
    assert refused(f"{head}.{payload[:-1]}.{signature}")
