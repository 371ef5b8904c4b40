"""The one configuration object. Every process builds it once and passes it down."""

from __future__ import annotations

import sys
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.redis_url import is_sentinel_url, parse_sentinel_url

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_JWT_SECRET_BYTES = 32

IPNetwork = IPv4Network | IPv6Network


def parse_networks(value: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.1, 192.168.0.0/16, ::1` -> networks (a bare address is a /32 or /128)."""
    return tuple(ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip())


class Settings(BaseSettings):
    """Environment variables with the `FT_` prefix; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="FT_", extra="ignore", hide_input_in_errors=True
    )  # URLs hold passwords

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="API processes (uvicorn --workers); each uses up to one core")
    flower_host: str = Field("127.0.0.1", description="where Flower listens (`python -m workers flower`)")
    flower_port: int = Field(5555, ge=0, le=65535)

    # Serving (`python -m api`): what one API process accepts before it answers 503 + Retry-After
    log_level: str = Field("info", description="log level of every process: uvicorn's and Celery's")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as readable text or one JSON object each"
    )
    request_log: bool = Field(True, description="one log line per request (logger ft.request), whatever FT_LOG_LEVEL")
    backlog: int = Field(2048, gt=0, description="listen() backlog: connections the kernel queues before accept")
    max_connections: int = Field(
        4096,
        gt=0,
        description="open connections per API process; a request on one more"
        " is answered 503 overloaded and the connection closed",
    )
    # A device's next request can arrive while its previous one is still finishing (its log line
    # and metrics after the answer): with 1,000 devices at once, 1024 answered 2-17 of them 503.
    max_inflight: int = Field(2048, gt=0, description="requests handled at once per API process; more get 503")
    overload_retry_after: int = Field(1, ge=0, description="Retry-After seconds of a 503 overloaded")
    # api/admission.py: a burst of chunks served a few dozen at a time, in arrival order.
    chunk_slots: int = Field(
        64, ge=0, description="chunk requests (ours and tus PATCH) that progress at once per API process; 0: no limit"
    )
    chunk_slot_lease: float = Field(
        1.0, gt=0, description="seconds a chunk request keeps its slot; a slower one goes on without it"
    )
    header_timeout: float = Field(10.0, gt=0, description="seconds a client has to send a whole request head")
    keepalive_timeout: float = Field(15.0, gt=0, description="seconds an idle keep-alive connection is kept")
    body_idle_timeout: float = Field(
        30.0, gt=0, description="seconds a chunk body may send no byte before it is dropped and its range released"
    )
    body_min_rate: float = Field(
        2048.0,
        ge=0,
        description="bytes/s a chunk body must average after its first FT_BODY_IDLE_TIMEOUT seconds; 0: no minimum",
    )

    # Redis client of the API: a bounded pool that waits when busy and fails fast when Redis is down
    redis_max_connections: int = Field(64, gt=0, description="Redis connections per API process")
    redis_pool_timeout: float = Field(30.0, gt=0, description="seconds a request waits for a free Redis connection")
    redis_connect_timeout: float = Field(0.5, gt=0, description="seconds; a Redis that does not accept is down")
    redis_socket_timeout: float = Field(30.0, gt=0, description="seconds one Redis command may take")
    unavailable_retry_after: int = Field(5, ge=0, description="Retry-After seconds of a 503 unavailable")

    # Storage and state
    data_dir: Path = Path("./data")
    redis_url: str = Field(
        DEFAULT_REDIS_URL, description="redis://... or sentinel://HOST:PORT,.../MASTER_NAME (core/redis_url.py)"
    )
    redis_server: str | None = Field(None, description="make run: the embedded redis-server binary to run")
    verbose: bool = Field(False, description="make run: show the children's output too")

    # Auth
    jwt_secret: SecretStr | None = None
    token_ttl: int = Field(3600, gt=0)
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    login_max_failures: int = Field(5, gt=0, description="failed logins per (user name, client address) per window")
    login_max_failures_per_address: int = Field(30, gt=0, description="failed logins per client address per window")
    login_window: int = Field(300, gt=0, description="seconds")
    login_hash_concurrency: int = Field(
        2, gt=0, description="passwords checked at once per API process (Argon2: 64 MiB each)"
    )
    login_hash_wait: float = Field(2.0, ge=0, description="seconds a login waits for a free slot, then 429")
    trusted_proxies: str = Field("", description="comma-separated IPs/CIDRs whose X-Forwarded-For is believed")
    user_cache_ttl: float = Field(2.0, ge=0, description="seconds a token's user lookup is reused")
    flower_basic_auth: SecretStr | None = None
    metrics_token: SecretStr | None = Field(
        None, description="a long-lived bearer secret (>= 32 bytes) that may read /metrics, besides admin tokens"
    )

    # Upload limits
    max_file_bytes: int = Field(TiB, gt=0)
    max_chunk_bytes: int = Field(64 * MiB, gt=0)
    min_free_bytes: int = Field(1 * GiB, ge=0)
    free_space_ttl: float = Field(
        1.0,
        ge=0,
        description="seconds a free-space measure is reused (this process's writes counted meanwhile; "
        "an older one is still used while a new one is taken; 0: a measure per chunk)",
    )
    claim_lease: int = Field(60, gt=0, description="seconds an in-flight chunk holds its range")
    # Per user (0: no limit); README "Fair use" says why these defaults
    max_open_uploads: int = Field(1000, ge=0, description="uploads not yet complete, per user")
    user_quota_bytes: int = Field(10 * TiB, ge=0, description="declared bytes of a user's open uploads")
    upload_create_rate: int = Field(6000, ge=0, description="uploads a user may create per minute")
    max_chunks_per_upload: int = Field(1000, ge=0, description="chunks an upload may hold whatever their size")
    min_average_chunk_bytes: int = Field(64 * KiB, ge=0, description="past that, chunks must average this")
    fsync_chunks: bool = False
    tus_commit_bytes: int = Field(
        8 * MiB, gt=0, description="a streaming tus PATCH records what it has stored at least this often"
    )

    # Browsers (tus through /files/)
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS; empty: none")

    # Downloads
    download_read_size: int = Field(1 * MiB, gt=0)
    accel_redirect: bool = False
    accel_prefix: str = "/_ft_files"
    max_ranges: int = Field(
        100,
        ge=1,
        description="ranges served per request after merging overlapping and"
        " adjacent ones; more and the whole file is sent (200)",
    )
    link_ttl: int = Field(300, gt=0, le=86400, description="seconds a signed download link stays valid")

    # Background work
    cleanup_interval: int = Field(3600, gt=0)
    stale_after: int = Field(86400, ge=0)
    persist_interval: int = Field(60, gt=0)
    persist_after: int = Field(300, ge=0)
    assembly_lease: float = Field(60.0, gt=0, description="seconds; an assembly killed mid-way is retried after this")
    task_visibility_timeout: int = Field(4 * 3600, gt=0)
    cleanup_wait: float = Field(10.0, ge=0, description="seconds POST /cleanup waits before answering 202")

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(f"FT_METRICS_TOKEN must be at least {MIN_JWT_SECRET_BYTES} bytes")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _valid_redis_url(cls, value: str) -> str:
        if is_sentinel_url(value):
            parse_sentinel_url(value)
        return value

    @cached_property
    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @cached_property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @cached_property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @cached_property
    def users_db(self) -> Path:
        return self.data_dir / "users.sqlite3"

    @cached_property
    def metrics_dir(self) -> Path:
        """PROMETHEUS_MULTIPROC_DIR of a multi-process API (`python -m api` empties it at start)."""
        return self.data_dir / "metrics"

    def ensure_dirs(self) -> None:
        for path in (self.data_dir, self.staging_dir, self.files_dir):
            path.mkdir(parents=True, exist_ok=True)

    def jwt_key(self) -> str:
        """The signing secret; refuses to hand out a missing or short one."""
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ValueError(
                f"FT_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes "
                "(`make run` generates one under FT_DATA_DIR when none is set)"
            )
        return secret


def describe_invalid(exc: ValidationError) -> list[str]:
    """One line per refused FT_ variable, as the user spells it: `FT_PORT: Input should be ...`.
    (The values are not repeated: a secret's would end up in a log.)"""
    lines = []
    for error in exc.errors():
        name = "FT_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else "FT_ settings"
        lines.append(f"{name}: {error['msg']}")
    return lines


def settings_or_exit(program: str) -> Settings:
    """Settings(), or a short message naming each bad variable and exit status 2: what a person
    starting `program` needs, instead of pydantic's traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        print(f"{program}: invalid configuration", file=sys.stderr)
        for line in describe_invalid(exc):
            print(f"  {line}", file=sys.stderr)
        raise SystemExit(2) from None
