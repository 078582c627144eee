"""Structured logs: one line per event, its name and fields as key=value."""

from __future__ import annotations

import logging
import sys

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class EventFormatter(logging.Formatter):
    """``time level logger event key=value ...`` with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            key: value
            for key, value in vars(record).items()
            if key not in _STANDARD and key != "action"
        }
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name} "
            f"{record.getMessage()}"
        )
        if fields:
            line += " " + " ".join(f"{key}={value!r}" for key, value in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Migration chatter on every start would bury the URL and demo logins.
    logging.getLogger("alembic").setLevel(max(root.level, logging.WARNING))
