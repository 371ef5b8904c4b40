"""core/redis_url.py: the one FT_REDIS_URL Sentinel form, parsed once and spelt for kombu."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.config import Settings
from core.redis_url import SentinelTarget, is_sentinel_url, parse_sentinel_url


def test_the_documented_form():
    target = parse_sentinel_url(
        "sentinel://:s%40cret@10.0.0.1:26379,redis-b,[::1]:26380/ftmaster?db=3&sentinel_password=watch"
    )
    assert target == SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("redis-b", 26379), ("::1", 26380)),
        master_name="ftmaster",
        db=3,
        username=None,
        password="s@cret",
        sentinel_password="watch",
    )


def test_defaults_and_an_acl_user():
    assert parse_sentinel_url("SENTINEL://h:1/m") == SentinelTarget((("h", 1),), "m")
    target = parse_sentinel_url("sentinel://app:pw@h:1/m")
    assert (target.username, target.password) == ("app", "pw")


@pytest.mark.parametrize(
    "url, says",
    [
        ("sentinel://h:1", "names its master"),
        ("sentinel://h:1/", "names its master"),
        ("sentinel://h:1/m/0", "names its master"),
        ("sentinel:///m", "is not one"),
        ("sentinel://h:1,,h:2/m", "is not one"),
        ("sentinel://h:99999/m", "out of range"),
        ("sentinel://h:0/m", "out of range"),
        ("sentinel://h:port/m", "is not one"),
        ("sentinel://user@h:1/m", "USER:PASSWORD@"),
        ("sentinel://h:1/m?db=x", "db is a number"),
        ("sentinel://h:1/m?password=p", "takes only"),
        ("sentinel://h:1/m?db", "key=value"),
        ("redis://h:1/0", "starts with sentinel://"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_sentinel_url(url)


def test_errors_never_echo_the_password():
    with pytest.raises(ValueError) as raised:
        parse_sentinel_url("sentinel://:topsecret@h:1")
    assert "topsecret" not in str(raised.value)
    with pytest.raises(ValidationError) as invalid:
        Settings(redis_url="sentinel://:topsecret@h:bad/m")
    assert "is not one" in str(invalid.value) and "topsecret" not in str(invalid.value)


def test_settings_take_both_forms():
    assert Settings(redis_url="redis://:pw@127.0.0.1:6380/2").redis_url == "redis://:pw@127.0.0.1:6380/2"
    assert is_sentinel_url(Settings(redis_url="sentinel://a:1,b:2/m").redis_url)


def test_kombu_spelling_repeats_credentials_and_db_per_sentinel():
    target = parse_sentinel_url("sentinel://:p%3Bw@a:1,[::1]:2/m?db=4")
    assert target.kombu_url() == "sentinel://:p%3Bw@a:1/4;sentinel://:p%3Bw@[::1]:2/4"
    assert parse_sentinel_url("sentinel://a:1/m").kombu_url() == "sentinel://a:1/0"


HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)


@given(
    sentinels=st.lists(st.tuples(HOSTS, st.integers(1, 65535)), min_size=1, max_size=5).map(tuple),
    master=TEXT,
    db=st.integers(0, 10_000),
    username=st.none() | TEXT,
    password=st.none() | st.text(max_size=30),
    sentinel_password=st.none() | TEXT,
)
def test_any_target_round_trips_through_its_url(sentinels, master, db, username, password, sentinel_password):
    target = SentinelTarget(
        sentinels, master, db, username if password is not None else None, password, sentinel_password
    )
    assert parse_sentinel_url(target.url()) == target
