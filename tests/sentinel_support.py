"""A Redis primary, a replica and three sentinels, all real redis-server processes on free ports
in a test's own directory (never 127.0.0.1:6379), for the Sentinel tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from core.redis_url import SentinelTarget
from ops.redis_server import find_redis_server, free_port
from tests.support import Proc, stop_all, wait_until

MASTER_NAME = "ftmaster"
PASSWORD = "sentinel-test-password"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


@dataclass
class SentinelSet:
    root: Path
    binary: str = field(default_factory=find_redis_server)
    servers: dict[int, Proc] = field(default_factory=dict)  # port -> redis-server (primary and replica)
    sentinels: dict[int, Proc] = field(default_factory=dict)

    @property
    def target(self) -> SentinelTarget:
        return SentinelTarget(tuple(("127.0.0.1", port) for port in self.sentinels), MASTER_NAME, 0, None, PASSWORD)

    @property
    def url(self) -> str:
        return self.target.url()

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=2, socket_connect_timeout=2)

    def start_server(self, replica_of: int | None = None) -> int:
        port = free_port()
        directory = self.root / f"redis-{port}"
        directory.mkdir(parents=True)
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(directory / "redis.log"),
            "--requirepass",
            PASSWORD,
            "--masterauth",
            PASSWORD,
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.servers[port] = Proc(args, {}, directory / "stdout.log").start()
        wait_until(lambda: self.server(port).ping(), timeout=15, what=f"redis-server on {port}")
        return port

    def start_sentinel(self, primary: int) -> int:
        port = free_port()
        directory = self.root / f"sentinel-{port}"
        directory.mkdir(parents=True)
        config = directory / "sentinel.conf"  # sentinels rewrite their config: a file of their own
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n"
            f"sentinel auth-pass {MASTER_NAME} {PASSWORD}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.sentinels[port] = Proc(
            [self.binary, str(config), "--sentinel", "--daemonize", "no"], {}, directory / "stdout.log"
        ).start()
        return port

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)

    def primary_port(self) -> int:
        """The primary as the sentinels name it (the first that answers)."""
        for port in self.sentinels:
            try:
                return int(self.sentinel(port).sentinel_get_master_addr_by_name(MASTER_NAME)[1])
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def replica_port(self) -> int:
        return next(port for port in self.servers if port != self.primary_port())

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every sentinel sees the primary, the replica and the two other sentinels; the replica
        is in sync (so that a failover has someone to promote)."""
        primary = next(iter(self.servers))

        def ready() -> bool:
            for port in self.sentinels:
                master = self.sentinel(port).sentinel_master(MASTER_NAME)
                if (
                    master["port"] != primary
                    or master["num-other-sentinels"] < len(self.sentinels) - 1
                    or master["num-slaves"] < len(self.servers) - 1
                ):
                    return False
            info = self.server(primary).info("replication")
            return info["connected_slaves"] == len(self.servers) - 1 and all(
                info[f"slave{i}"]["state"] == "online" for i in range(info["connected_slaves"])
            )

        wait_until(ready, timeout=timeout, interval=0.1, what="the sentinels to see the primary and its replica")


@contextmanager
def running_sentinel_set(root: Path, replicas: int = 1, sentinels: int = 3) -> Iterator[SentinelSet]:
    """The set started, and every process of it stopped on the way out, however it is left."""
    cluster = SentinelSet(root)
    with ExitStack() as cleanup:
        cleanup.callback(lambda: stop_all([*cluster.servers.values(), *cluster.sentinels.values()]))  # sentinels first
        primary = cluster.start_server()
        for _ in range(replicas):
            cluster.start_server(replica_of=primary)
        for _ in range(sentinels):
            cluster.start_sentinel(primary)
        cluster.wait_ready()
        yield cluster


def wait_promoted(cluster: SentinelSet, old_primary: int, timeout: float = 60.0) -> int:
    """The port of the new primary once the sentinels have promoted one and it takes writes."""

    def promoted():
        port = cluster.primary_port()
        return port if port != old_primary and cluster.server(port).info("replication")["role"] == "master" else None

    return wait_until(promoted, timeout=timeout, interval=0.05, what="the sentinels to promote the replica")
