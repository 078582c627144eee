"""The one clock of the application; tests may replace ``now``."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Treat naive datetimes read back from SQLite as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
