"""The one clock of the application; tests may replace ``now``."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    """Timezone-aware UTC now."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Treat naive datetimes read back from SQLite as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    """An instant as the API shows every time: ISO 8601 in UTC, ending in Z."""
    return as_utc(value).astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"
