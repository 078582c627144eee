"""Settings from environment variables (prefix ``SHEETBRIDGE_``) or a ``.env`` file."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from sheetbridge.db import PG_MAX_OVERFLOW, PG_POOL_SIZE

ENV_PREFIX = "SHEETBRIDGE_"

LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(lambda level: level.upper() if isinstance(level, str) else level),
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        allow_inf_nan=False,
    )

    data_dir: Path = Field(
        default=Path("data"), description="Folder for the SQLite database and workbooks"
    )
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("SHEETBRIDGE_DATABASE_URL", "DATABASE_URL"),
        description="SQLAlchemy URL; empty means SQLite in the data folder",
    )
    database_pool_size: int = Field(
        default=PG_POOL_SIZE,
        ge=1,
        le=1000,
        description=(
            "PostgreSQL connections each process keeps open; with "
            "database_max_overflow, what each process may open at most"
        ),
    )
    database_max_overflow: int = Field(
        default=PG_MAX_OVERFLOW,
        ge=0,
        le=1000,
        description="PostgreSQL connections a process opens beyond its pool at peaks",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    forwarded_allow_ips: str = Field(
        default="",
        description=(
            "addresses of reverse proxies (comma-separated, or *) whose "
            "X-Forwarded-For and X-Forwarded-Proto are believed; empty: none"
        ),
    )
    secret_key: str = Field(
        default="",
        description="Signs session cookies; empty means a key kept in the data folder",
    )
    session_max_age_s: int = Field(default=8 * 3600, ge=60, le=366 * 24 * 3600)
    cookie_secure: bool = False
    sign_in_tries: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "wrong passwords for one user from one address, within "
            "sign_in_window_s, after which that user's tries from there wait"
        ),
    )
    sign_in_tries_per_address: int = Field(
        default=30,
        ge=1,
        le=100_000,
        description=(
            "wrong sign-ins from one address, for any users, within "
            "sign_in_window_s, after which every try from there waits"
        ),
    )
    sign_in_window_s: int = Field(default=900, ge=1, le=24 * 3600)
    worker_concurrency: int = Field(
        default=32,
        ge=1,
        le=256,
        description=(
            "sync jobs running at once per worker process; they mostly wait on "
            "the Sheets API, so this is about users served at once, not cores"
        ),
    )
    worker_process: bool = Field(
        default=True,
        description="serve runs sync workers in a child process, off the web's core",
    )
    workbook_locked_retry_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description=(
            "how long a sync waits before it tries a workbook open in Excel or "
            "LibreOffice again (time to close it)"
        ),
    )
    worker_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description=(
            "how much lower the CPU priority of serve's worker process is than the "
            "web process's, so a click is answered before sync work goes on"
        ),
    )
    lease_s: float = Field(default=30.0, gt=0, le=3600)
    poll_interval_s: float = Field(default=1.0, gt=0, le=600)
    progress_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=1800,
        description="how often a worker process stores its running jobs' progress",
    )
    recent_jobs: int = Field(default=20, ge=1, le=500)
    demo: bool = Field(
        default=True, description="Seed the demo agency into an empty DB"
    )
    sheet_latency_ms: int = Field(
        default=0,
        ge=0,
        le=600_000,
        description="Added to every workbook call (demos, benchmarks)",
    )
    log_level: LogLevel = "INFO"

    # Google Sheets
    google_sheets_base_url: str = Field(
        default="https://sheets.googleapis.com",
        description="Sheets API root; point it at `sheetbridge emulator` in tests",
    )
    google_credentials_file: Path | None = Field(
        default=None,
        description="Service-account key file; else GOOGLE_APPLICATION_CREDENTIALS",
    )
    google_oauth_token_file: Path | None = Field(
        default=None, description="OAuth authorized-user file (refresh token)"
    )
    google_static_token: str = Field(
        default="", description="Fixed bearer token (emulator only); empty = none"
    )
    google_timeout_s: float = Field(default=30.0, gt=0, le=600)
    google_max_retries: int = Field(default=5, ge=0, le=20)
    google_backoff_base_s: float = Field(default=1.0, gt=0, le=3600)
    google_backoff_max_s: float = Field(default=32.0, gt=0, le=3600)
    sheets_quota_backend: Literal["memory", "postgres"] = Field(
        default="memory",
        description="Where the API quota limiter counts: this process or PostgreSQL",
    )
    sheets_reads_per_minute_project: int = Field(default=300, ge=0)
    sheets_writes_per_minute_project: int = Field(default=300, ge=0)
    sheets_reads_per_minute_user: int = Field(default=60, ge=0)
    sheets_writes_per_minute_user: int = Field(default=60, ge=0)

    @field_validator("database_url")
    @classmethod
    def _not_in_memory(cls, url: str) -> str:
        """serve's web and worker processes share the book, so SQLite must be a
        file: a database in memory would be one process's alone."""
        try:
            parsed = make_url(url) if url else None
        except ArgumentError:
            return url  # named when the database is opened
        if parsed is not None and parsed.get_backend_name() == "sqlite":
            where = parsed.database or ""
            in_memory = where in ("", ":memory:") or where.startswith("file::memory:")
            if in_memory or parsed.query.get("mode") == "memory":
                raise ValueError(
                    "an in-memory SQLite database lives in one process, and the web "
                    "and its workers share the book: give a file, as "
                    "sqlite:////path/to/sheetbridge.db"
                )
        return url

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, proxies: str) -> str:
        """Addresses or networks, comma-separated, or *: a typo would leave
        every user behind the proxy sharing its address, unnoticed."""
        for entry in (part.strip() for part in proxies.split(",")):
            if entry and entry != "*":
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{entry!r} is no address; give the proxies' addresses or "
                        "networks, comma-separated (10.0.0.5, 10.0.1.0/24), or *"
                    ) from None
        return proxies

    @field_validator("google_sheets_base_url")
    @classmethod
    def _a_web_address(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                "should be an http:// or https:// address, as "
                "https://sheets.googleapis.com or http://127.0.0.1:8090"
            )
        return url

    @model_validator(mode="after")
    def _agree(self) -> Settings:
        """Settings that only work together."""
        if self.progress_interval_s > self.lease_s / 2:
            raise ValueError(
                f"{ENV_PREFIX}PROGRESS_INTERVAL_S={self.progress_interval_s} must be "
                f"at most half of {ENV_PREFIX}LEASE_S={self.lease_s}: running jobs "
                "renew their lease each time their progress is kept"
            )
        if self.google_backoff_base_s > self.google_backoff_max_s:
            raise ValueError(
                f"{ENV_PREFIX}GOOGLE_BACKOFF_BASE_S={self.google_backoff_base_s} must "
                f"be at most {ENV_PREFIX}GOOGLE_BACKOFF_MAX_S="
                f"{self.google_backoff_max_s}"
            )
        postgres = self.effective_database_url.startswith("postgresql")
        if self.sheets_quota_backend == "postgres" and not postgres:
            raise ValueError(
                f"{ENV_PREFIX}SHEETS_QUOTA_BACKEND=postgres counts in PostgreSQL, "
                "and the database is SQLite: set DATABASE_URL to a PostgreSQL "
                "database, or leave the quota to each process (memory)"
            )
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sheetbridge.db').resolve()}"

    @property
    def workbook_dir(self) -> Path:
        return self.data_dir / "workbooks"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def setting_problems(refused: ValidationError) -> list[str]:
    """One line per bad setting: the variable as it was set, its value, and
    what it should be."""
    problems = []
    for error in refused.errors(include_url=False):
        rule = error["msg"].removeprefix("Value error, ").removeprefix("Input ")
        if not error["loc"]:  # a rule between settings, which names them
            problems.append(rule)
            continue
        name = _variable(str(error["loc"][0]))
        problems.append(f"{name}={error['input']!r}: {rule}")
    return problems


def _variable(name: str) -> str:
    """The environment variable behind a field pydantic names by its name or by
    its first alias: the alias that was set, if any."""
    for field, info in Settings.model_fields.items():
        aliases = _aliases(info.validation_alias)
        if name in (field, *aliases):
            set_as = (alias for alias in aliases if alias in os.environ)
            return next(set_as, ENV_PREFIX + field.upper())
    return name


def _aliases(alias: object) -> list[str]:
    return (
        [str(choice) for choice in alias.choices]
        if isinstance(alias, AliasChoices)
        else []
    )
