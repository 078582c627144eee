"""Settings from environment variables (prefix ``SHEETBRIDGE_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    host: str = "127.0.0.1"
    port: int = 8000
    secret_key: str = Field(
        default="",
        description="Signs session cookies; empty means a key kept in the data folder",
    )
    session_max_age_s: int = 8 * 3600
    cookie_secure: bool = False
    worker_concurrency: int = Field(default=8, ge=1, le=256)
    lease_s: float = Field(default=30.0, gt=0)
    poll_interval_s: float = Field(default=1.0, gt=0)
    recent_jobs: int = Field(default=20, ge=1, le=500)
    demo: bool = Field(
        default=True, description="Seed the demo agency into an empty DB"
    )
    sheet_latency_ms: int = Field(
        default=0, ge=0, description="Added to every workbook call (demos, benchmarks)"
    )
    log_level: str = "INFO"

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
