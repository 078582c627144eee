"""Wiring the Google backend to a running emulator, for tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sheetbridge.sheets.google import (
    GoogleSheetsBackend,
    OnRetry,
    SheetsClient,
    StaticToken,
    TokenSource,
)
from sheetbridge.sheets.quota import OnWait, QuotaLimiter
from sheetbridge.testing.emulator import EmulatorServer
from sheetbridge.testing.model import Spreadsheet


class GoogleHarness:
    """Creates spreadsheets in an emulator and backends that talk to them."""

    def __init__(self, server: EmulatorServer) -> None:
        """Use the running ``server``."""
        self.server = server
        self.state = server.state

    def spreadsheet(self, title: str = "Test", **props: Any) -> Spreadsheet:
        """A new, empty spreadsheet (one tab ``Sheet1``)."""
        return self.state.create(title, **props)

    def client(
        self,
        *,
        tokens: TokenSource | None = None,
        limiter: QuotaLimiter | None = None,
        max_retries: int = 5,
        backoff_base_s: float = 0.01,
        backoff_max_s: float = 0.2,
        on_wait: OnWait | None = None,
        on_retry: OnRetry | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> SheetsClient:
        """A client for the emulator with fast retries."""
        extra: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
        return SheetsClient(
            base_url=self.server.base_url,
            tokens=tokens or StaticToken(""),
            limiter=limiter,
            max_retries=max_retries,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            on_wait=on_wait,
            on_retry=on_retry,
            **extra,
        )

    def backend(
        self, spreadsheet: Spreadsheet | str | None = None, **client_options: Any
    ) -> GoogleSheetsBackend:
        """A backend on ``spreadsheet`` (a new one if omitted)."""
        if spreadsheet is None:
            spreadsheet = self.spreadsheet()
        book_id = (
            spreadsheet if isinstance(spreadsheet, str) else spreadsheet.spreadsheet_id
        )
        return GoogleSheetsBackend(self.client(**client_options), book_id)
