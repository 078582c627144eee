"""Settings from environment variables (prefix ``SHEETBRIDGE_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sheetbridge.db import PG_MAX_OVERFLOW, PG_POOL_SIZE


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHEETBRIDGE_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
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
    port: int = 8000
    secret_key: str = Field(
        default="",
        description="Signs session cookies; empty means a key kept in the data folder",
    )
    session_max_age_s: int = 8 * 3600
    cookie_secure: bool = False
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
    lease_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    progress_interval_s: float = Field(
        default=0.5,
        gt=0,
        description="how often a worker process stores its running jobs' progress",
    )
    recent_jobs: int = Field(default=20, ge=1, le=500)
    demo: bool = Field(
        default=True, description="Seed the demo agency into an empty DB"
    )
    sheet_latency_ms: int = Field(
        default=0, ge=0, description="Added to every workbook call (demos, benchmarks)"
    )
    log_level: str = "INFO"

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
    google_timeout_s: float = Field(default=30.0, gt=0)
    google_max_retries: int = Field(default=5, ge=0, le=20)
    google_backoff_base_s: float = Field(default=1.0, gt=0)
    google_backoff_max_s: float = Field(default=32.0, gt=0)
    sheets_quota_backend: str = Field(
        default="memory",
        pattern="^(memory|postgres)$",
        description="Where the API quota limiter counts: this process or PostgreSQL",
    )
    sheets_reads_per_minute_project: int = Field(default=300, ge=0)
    sheets_writes_per_minute_project: int = Field(default=300, ge=0)
    sheets_reads_per_minute_user: int = Field(default=60, ge=0)
    sheets_writes_per_minute_user: int = Field(default=60, ge=0)

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
