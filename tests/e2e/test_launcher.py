"""`make run` (python -m launcher) as a user runs it: everything comes up, everything stops.

The default Redis URL (127.0.0.1:6379) may be someone else's Redis, so the embedded-Redis
test points the launcher's probe elsewhere with FT_LAUNCHER_DEFAULT_REDIS_URL (test-only).
"""

from __future__ import annotations

import os
import signal
import stat
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from ops.redis_server import answers, free_port
from tests.support import PYTHON, Proc, wait_until

DB = 14  # a database of our own redis-server; conftest's fixtures use the low ones, test_compose 15


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def process_tree(root: int) -> set[int]:
    """`root` and all its descendants, from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))):
            parents[int(entry.name)] = info[0]
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - tree
        tree |= frontier
    return tree


def alive(pid: int) -> bool:
    info = _stat(pid)
    return info is not None and info[1] != "Z"


class Launcher:
    def __init__(self, tmp: Path, name: str = "launcher", **env: str) -> None:
        self.data_dir = tmp / "data"
        self.port, self.flower_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.flower = f"http://127.0.0.1:{self.flower_port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "FLOWER_"))}
        base.update(FT_DATA_DIR=str(self.data_dir), FT_PORT=str(self.port), FT_FLOWER_PORT=str(self.flower_port),
                    FT_MIN_FREE_BYTES="0", PYTHONUNBUFFERED="1", **env)
        self.proc = Proc([PYTHON, "-m", "launcher"], base, tmp / f"{name}.log").start()

    def wait_ready(self) -> None:
        def healthy():
            if not self.proc.alive():
                return "exited"  # stop waiting at once
            body = httpx.get(f"{self.url}/health", timeout=2).json()
            return body.get("redis") == "ok" and body.get("workers", 0) >= 1

        assert wait_until(healthy, timeout=90, what="/health green") != "exited", self.proc.log()
        wait_until(lambda: httpx.get(f"{self.flower}/", timeout=5).status_code == 401,
                   timeout=30, what="Flower asking for auth")

    def flower_auth(self, auth: tuple[str, str]) -> None:
        assert httpx.get(f"{self.flower}/api/workers", timeout=5).status_code == 401
        assert httpx.get(f"{self.flower}/api/workers", auth=auth, timeout=15).status_code == 200

    def close(self) -> None:
        """Teardown: whatever a test left running stops, with every process the launcher started."""
        if not self.proc.alive():
            return
        tree = process_tree(self.proc.pid)
        try:
            self.proc.stop(timeout=40)  # SIGTERM to its process group, SIGKILL after the timeout
        finally:
            for pid in tree:
                if alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    def stop(self, sig: int) -> set[int]:
        """Send `sig`; the launcher must exit and leave none of its processes behind."""
        tree = process_tree(self.proc.pid)
        assert len(tree) >= 5, tree  # launcher, api, worker, beat, flower (and more)
        self.proc.kill(sig)
        self.proc.popen.wait(40)
        wait_until(lambda: not any(alive(pid) for pid in tree), timeout=20, what="the whole process tree to exit")
        return tree


@pytest.fixture
def launch(tmp_path):
    """Start launchers (python -m launcher) that are always stopped at teardown, pass or fail."""
    started: list[Launcher] = []

    def start(name: str = "launcher", **env: str) -> Launcher:
        started.append(Launcher(tmp_path, name, **env))
        return started[-1]

    yield start
    with ExitStack() as stopping:
        for launcher in started:
            stopping.callback(launcher.close)


@pytest.fixture
def own_db(redis_server):
    url = f"redis://127.0.0.1:{redis_server.port}/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_with_ft_redis_url_everything_runs_and_stops(launch, own_db, sig):
    launcher = launch(FT_REDIS_URL=own_db, FT_ADMIN_USERNAME="boss", FT_ADMIN_PASSWORD="boss-password")
    launcher.wait_ready()
    launcher.flower_auth(("boss", "boss-password"))
    assert httpx.post(f"{launcher.url}/token", json={"username": "boss", "password": "boss-password"}).status_code == 200
    tree = launcher.stop(sig)
    assert launcher.proc.popen.returncode == 0, launcher.proc.log()
    log = launcher.proc.log()
    assert "Redis: using FT_REDIS_URL" in log and "EMBEDDED" not in log
    assert "boss-password" not in log
    for name in ("api ", "worker ", "beat ", "flower "):
        assert any(line.startswith(name) for line in log.splitlines()), f"no {name!r} lines"
    assert (launcher.data_dir / "jwt_secret").exists()
    assert not (launcher.data_dir / "flower_password").exists()
    assert len(tree) >= 5


def test_embedded_redis_and_generated_secrets_survive_a_restart(launch):
    port = free_port()
    env = {"FT_LAUNCHER_DEFAULT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    first = launch("first", **env)
    first.wait_ready()
    log = first.proc.log()
    head = log.splitlines()[:5]
    assert any("EMBEDDED redis-server" in line and f":{port}" in line for line in head), head
    redis_dir = first.data_dir / "redis"
    client = redis.Redis(port=port)
    assert Path(client.config_get("dir")["dir"]).resolve() == redis_dir.resolve()
    client.set("launcher-test", "kept")
    client.close()

    jwt_path, flower_path = first.data_dir / "jwt_secret", first.data_dir / "flower_password"
    for path in (jwt_path, flower_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret, password = jwt_path.read_text(), flower_path.read_text().strip()
    assert len(secret.strip()) >= 64
    assert password in log  # printed for the user
    first.flower_auth(("admin", password))
    first.stop(signal.SIGTERM)
    assert first.proc.popen.returncode == 0
    assert not answers(f"redis://127.0.0.1:{port}/0"), "embedded Redis still running"
    assert (redis_dir / "appendonlydir").is_dir()

    second = launch("second", **env)
    second.wait_ready()
    assert "read from" in second.proc.log() and jwt_path.read_text() == secret
    assert flower_path.read_text().strip() == password
    assert redis.Redis(port=port).get("launcher-test") == b"kept"  # data persisted under FT_DATA_DIR/redis
    second.flower_auth(("admin", password))
    second.stop(signal.SIGTERM)
    assert not answers(f"redis://127.0.0.1:{port}/0")


def test_a_dying_child_stops_everything(launch, own_db):
    launcher = launch(FT_REDIS_URL=own_db)
    launcher.wait_ready()
    tree = process_tree(launcher.proc.pid)
    beat = next(pid for pid in tree if b"\x00beat\x00" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(beat, signal.SIGKILL)
    assert launcher.proc.popen.wait(40) != 0
    assert "beat exited unexpectedly" in launcher.proc.log()
    wait_until(lambda: not any(alive(pid) for pid in tree), timeout=20, what="the whole process tree to exit")


def test_unreachable_ft_redis_url_fails_clearly(launch):
    launcher = launch(FT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert launcher.proc.popen.wait(30) != 0
    assert "does not answer" in launcher.proc.log()


def test_children_die_with_a_killed_launcher(launch):
    """SIGKILL gives the launcher no chance to clean up: PR_SET_PDEATHSIG must do it."""
    port = free_port()
    launcher = launch(FT_LAUNCHER_DEFAULT_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    launcher.wait_ready()
    tree = process_tree(launcher.proc.pid)
    os.kill(launcher.proc.pid, signal.SIGKILL)
    launcher.proc.popen.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in tree), timeout=30, what="the orphans to exit")
    assert not answers(f"redis://127.0.0.1:{port}/0")
