"""docker-compose.yml (Docker cannot run here): every service command is a real entry point.

Each Python service's command is run locally, as written, with only the container
specifics mapped (python binary, Redis host, ports, /data), against our own redis-server.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys

import httpx
import pytest
import redis
import yaml

from core.config import Settings
from core.workers_registry import WORKERS_KEY
from ops.redis_server import free_port
from tests.support import JWT_SECRET, ROOT, Proc, require_tool, stop_all, wait_until

APP_SERVICES = ("api", "worker", "beat", "flower")
DB = 15  # a database of our own redis-server for this module; conftest's fixtures use the low ones
USER_ENV = {
    "FT_JWT_SECRET": JWT_SECRET,
    "FT_ADMIN_USERNAME": "root",
    "FT_ADMIN_PASSWORD": "compose-test-pw",
    "FT_FLOWER_BASIC_AUTH": "ops:flower-test-pw",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` (enough for our file)."""

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would refuse: {name} is unset ({arg})")
        return arg or ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def test_services_and_their_wiring(compose):
    services = compose["services"]
    assert set(APP_SERVICES) | {"redis", "nginx"} <= set(services)
    assert services["redis"]["image"].startswith("redis:7")
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "/health" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["nginx"]["profiles"] == ["accel"]
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"] == "."
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["environment"]["FT_REDIS_URL"] == "redis://redis:6379/0"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "requirements.txt" in dockerfile
    # The image and the api service serve through the one entry point, built from FT_* settings.
    assert 'CMD ["python", "-m", "api"]' in dockerfile
    assert services["api"]["command"] == ["python", "-m", "api"]


def test_all_services_share_one_data_volume(compose):
    services = compose["services"]
    mounts = {}
    for name in APP_SERVICES:
        data_dir = services[name]["environment"]["FT_DATA_DIR"]
        mounts[name] = [v for v in services[name]["volumes"] if v.split(":")[1] == data_dir]
        assert len(mounts[name]) == 1, f"{name} does not mount FT_DATA_DIR"
    volumes = {m[0].split(":")[0] for m in mounts.values()}
    assert len(volumes) == 1 and volumes <= set(compose["volumes"])
    (volume,) = volumes
    assert any(v.startswith(f"{volume}:") and v.endswith(":ro") for v in services["nginx"]["volumes"])


def test_nginx_config_is_adapted_to_the_compose_network(compose, tmp_path):
    """The nginx service rewrites deploy/nginx.conf at start: run that rewrite here."""
    nginx = compose["services"]["nginx"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in nginx["volumes"])
    conf_in = mounts["./deploy/nginx.conf"]
    data_mount = next(target for source, target in mounts.items() if source in compose["volumes"])
    assert nginx["command"][:2] == ["sh", "-c"]
    rewrite, start = nginx["command"][2].split(" && ")
    assert start.startswith("exec nginx") and "daemon off" in start
    local = rewrite.replace(conf_in, str(ROOT / "deploy/nginx.conf")).replace(
        "/etc/nginx/nginx.conf", str(tmp_path / "nginx.conf")
    )
    assert local != rewrite
    subprocess.run(["sh", "-c", local], check=True)
    conf = (tmp_path / "nginx.conf").read_text()
    assert re.search(r"server api:8000;", conf) and re.search(r"listen 8080;", conf)
    assert "127.0.0.1" not in conf, "a host-only address is left in the compose nginx config"
    assert nginx["ports"] == ["8080:8080"]
    # X-Accel-Redirect files are served from the read-only data volume: FT_DATA_DIR/files.
    (alias,) = re.findall(r"alias\s+(\S+);", conf)
    assert alias.rstrip("/") == f"{data_mount}/files"


def test_env_names_are_settings(compose):
    fields = set(Settings.model_fields)
    for name, service in compose["services"].items():
        for key in service.get("environment", {}) or {}:
            if key.startswith("FT_"):
                assert key[3:].lower() in fields, f"{name}: {key} is not a setting"
    assert set(re.findall(r"\bFT_\w+", (ROOT / "Dockerfile").read_text())) <= {f"FT_{f.upper()}" for f in fields}


def _local(command: list[str], port_map: dict[str, int]) -> list[str]:
    """The container command for this machine: our python, 127.0.0.1, free ports."""
    assert command[:2] == ["python", "-m"], command
    args = [sys.executable, *command[1:]]
    out = []
    for i, arg in enumerate(args):
        if arg == "0.0.0.0" and args[i - 1] == "--host":
            out.append("127.0.0.1")
        elif args[i - 1] == "--port" and arg in port_map:
            out.append(str(port_map[arg]))
        elif arg.startswith("--address="):
            out.append("--address=127.0.0.1")
        elif arg.startswith("--port="):
            out.append(f"--port={port_map[arg.split('=', 1)[1]]}")
        else:
            out.append(arg)
    return out


def test_service_commands_come_up(compose, redis_server, tmp_path):
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    port_map = {"8000": free_port(), "5555": free_port()}
    procs: dict[str, Proc] = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FT_", "FLOWER_"))}
    try:
        for name in APP_SERVICES:
            service = compose["services"][name]
            env = {k: interpolate(v, USER_ENV) for k, v in service["environment"].items()}
            assert env["FT_REDIS_URL"].startswith("redis://redis:6379/")
            env.update(
                FT_REDIS_URL=redis_url, FT_DATA_DIR=str(tmp_path / "data"), FT_MIN_FREE_BYTES="0", PYTHONUNBUFFERED="1"
            )
            if "FT_HOST" in env:  # the api (`python -m api`) listens where its settings say
                assert env["FT_HOST"] == "0.0.0.0"
                env.update(FT_HOST="127.0.0.1", FT_PORT=str(port_map[str(env["FT_PORT"])]))
            procs[name] = Proc(
                _local(service["command"], port_map), {**base_env, **env}, tmp_path / f"{name}.log"
            ).start()

        def wait_up(name, check, what):
            """Wait for `check`, but stop waiting at once when the process died."""
            done = wait_until(lambda: "exited" if not procs[name].alive() else check(), timeout=60, what=what)
            assert done != "exited", f"{name} exited:\n{procs[name].log()}"

        api = f"http://127.0.0.1:{port_map['8000']}"
        flower = f"http://127.0.0.1:{port_map['5555']}"
        wait_up("api", lambda: httpx.get(f"{api}/openapi.json", timeout=2).status_code == 200, "the api service")
        wait_up("worker", lambda: client.zcard(WORKERS_KEY) >= 1, "a worker heartbeat")
        wait_up("beat", lambda: client.exists("ft:redbeat:lock"), "beat's lock")
        assert "beat: Starting" in procs["beat"].log()
        wait_up("flower", lambda: httpx.get(f"{flower}/api/workers", timeout=5).status_code == 401, "flower's 401")
        admin = (USER_ENV["FT_ADMIN_USERNAME"], USER_ENV["FT_ADMIN_PASSWORD"])
        auth = tuple(USER_ENV["FT_FLOWER_BASIC_AUTH"].split(":"))
        for path in ("/api/workers", "/metrics", "/healthcheck"):
            assert httpx.get(f"{flower}{path}", timeout=10).status_code == 401, path
            assert httpx.get(f"{flower}{path}", auth=admin, timeout=10).status_code == 401, path  # not the admin's
            assert httpx.get(f"{flower}{path}", auth=auth, timeout=10).status_code == 200, path
        assert USER_ENV["FT_FLOWER_BASIC_AUTH"] not in " ".join(procs["flower"].args)

        # The api healthcheck, as written, passes once /health is green.
        check = compose["services"]["api"]["healthcheck"]["test"]
        assert check[0] == "CMD"
        script = check[3].replace(":8000/", f":{port_map['8000']}/")
        wait_until(
            lambda: subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == 0,
            timeout=30,
            what="the api healthcheck",
        )
    finally:
        try:
            stop_all(procs.values())
        finally:
            client.flushdb()
            client.close()
    for name, proc in procs.items():
        assert not proc.alive(), f"{name} did not stop"


SCALE_APIS = ("api", "api2", "api3")
SCALE_WORKERS = ("worker", "worker2")


def test_scale_profile_has_three_api_nodes_two_workers_and_a_balancer(compose):
    services = compose["services"]
    scale = {name for name, s in services.items() if "scale" in s.get("profiles", [])}
    assert scale == {"api2", "api3", "worker2", "balancer"}
    for name in SCALE_APIS:  # the same node, three times: command, settings, data volume, health
        assert services[name]["command"] == ["python", "-m", "api"]
        assert services[name]["environment"] == services["api"]["environment"]
        assert services[name]["volumes"] == services["api"]["volumes"]
        assert "/health" in " ".join(services[name]["healthcheck"]["test"])
        assert services["balancer"]["depends_on"][name]["condition"] == "service_healthy"
    assert services["api2"]["ports"] == services["api3"]["ports"] == []  # only through the balancer
    for name in SCALE_WORKERS:
        assert services[name]["command"] == services["worker"]["command"]
        assert services[name]["volumes"] == services["api"]["volumes"]
    # The balancer's fixed address is in the network's subnet; the file tells users to trust it.
    address = services["balancer"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    usage = f"FT_TRUSTED_PROXIES={address} docker compose --profile scale up"
    assert usage in (ROOT / "docker-compose.yml").read_text()
    assert services["api"]["environment"]["FT_TRUSTED_PROXIES"] == "${FT_TRUSTED_PROXIES:-}"


def test_balancer_config_is_adapted_to_the_compose_network(compose, tmp_path):
    """The balancer rewrites deploy/nginx-balancer.conf at start: run that rewrite here, then let
    nginx check the result (the service names mapped to loopback addresses, as Docker's DNS would)."""
    balancer = compose["services"]["balancer"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in balancer["volumes"])
    conf_in = mounts["./deploy/nginx-balancer.conf"]
    assert balancer["command"][:2] == ["sh", "-c"]
    rewrite, start = balancer["command"][2].split(" && ")
    assert start.startswith("exec nginx") and "daemon off" in start
    local = rewrite.replace(conf_in, str(ROOT / "deploy/nginx-balancer.conf")).replace(
        "/etc/nginx/nginx.conf", str(tmp_path / "nginx.conf")
    )
    subprocess.run(["sh", "-c", local], check=True)
    conf = (tmp_path / "nginx.conf").read_text()
    upstream = re.search(r"upstream ft_api_nodes \{(.*?)\}", conf, re.S).group(1)
    assert re.findall(r"server (\S+?):8000", upstream) == list(SCALE_APIS)
    assert "10.0.0.1" not in upstream and re.search(r"listen 8080;", conf)
    assert balancer["ports"] == ["8081:8080"]
    names = {name: f"127.0.0.{i + 2}" for i, name in enumerate(SCALE_APIS)}
    checked = re.sub(r"server (api\d?):8000", lambda m: f"server {names[m.group(1)]}:8000", conf)
    (tmp_path / "nginx.conf").write_text(checked.replace("/dev/stdout", str(tmp_path / "access.log")))
    result = subprocess.run(
        [
            require_tool("nginx"),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
