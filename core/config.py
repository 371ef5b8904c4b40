"""The one configuration object. Every process builds it once and passes it down."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
MIN_JWT_SECRET_BYTES = 32


class Settings(BaseSettings):
    """Environment variables with the `FT_` prefix; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    # Network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_workers: int = Field(1, ge=1, le=64, description="API processes (uvicorn --workers); each uses up to one core")
    flower_port: int = Field(5555, ge=0, le=65535)

    # Storage and state
    data_dir: Path = Path("./data")
    redis_url: str = DEFAULT_REDIS_URL

    # Auth
    jwt_secret: SecretStr | None = None
    token_ttl: int = Field(3600, gt=0)
    admin_username: str | None = None
    admin_password: SecretStr | None = None
    login_max_failures: int = Field(5, gt=0, description="failed logins per user name per window")
    login_max_failures_per_address: int = Field(30, gt=0, description="failed logins per client address per window")
    login_window: int = Field(300, gt=0, description="seconds")
    flower_basic_auth: SecretStr | None = None

    # Upload limits
    max_file_bytes: int = Field(TiB, gt=0)
    max_chunk_bytes: int = Field(64 * MiB, gt=0)
    min_free_bytes: int = Field(1 * GiB, ge=0)
    claim_lease: int = Field(60, gt=0, description="seconds an in-flight chunk holds its range")
    fsync_chunks: bool = False

    # Downloads
    download_read_size: int = Field(1 * MiB, gt=0)
    accel_redirect: bool = False
    accel_prefix: str = "/_ft_files"
    link_ttl: int = Field(300, gt=0, le=86400, description="seconds a signed download link stays valid")

    # Background work
    cleanup_interval: int = Field(3600, gt=0)
    stale_after: int = Field(86400, ge=0)
    persist_interval: int = Field(60, gt=0)
    persist_after: int = Field(300, ge=0)
    assembly_lease: float = Field(60.0, gt=0, description="seconds; an assembly killed mid-way is retried after this")
    task_visibility_timeout: int = Field(4 * 3600, gt=0)
    cleanup_wait: float = Field(10.0, ge=0, description="seconds POST /cleanup waits before answering 202")

    @cached_property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @cached_property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @cached_property
    def users_db(self) -> Path:
        return self.data_dir / "users.sqlite3"

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
