"""Settings from the environment: a bad value is named, with what it should be."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sheetbridge.config import Settings, setting_problems


def _problems(monkeypatch: pytest.MonkeyPatch, **environment: str) -> list[str]:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None)
    return setting_problems(refused.value)


@pytest.mark.parametrize(
    ("variable", "value", "told"),
    [
        ("SHEETBRIDGE_PORT", "abc", "should be a valid integer"),
        ("SHEETBRIDGE_PORT", "70000", "less than or equal to 65535"),
        ("SHEETBRIDGE_PORT", "0", "greater than or equal to 1"),
        ("SHEETBRIDGE_WORKER_NICE", "50", "less than or equal to 19"),
        ("SHEETBRIDGE_DEMO", "maybe", "should be a valid boolean"),
        ("SHEETBRIDGE_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING', 'ERROR'"),
        ("SHEETBRIDGE_SHEETS_QUOTA_BACKEND", "redis", "'memory' or 'postgres'"),
        ("SHEETBRIDGE_DATABASE_URL", "sqlite://", "in-memory SQLite"),
        ("SHEETBRIDGE_DATABASE_URL", "sqlite:///:memory:", "in-memory SQLite"),
        ("DATABASE_URL", "sqlite:///file::memory:?uri=true", "in-memory SQLite"),
        ("SHEETBRIDGE_LEASE_S", "inf", "should be a finite number"),
        ("SHEETBRIDGE_LEASE_S", "1e12", "less than or equal to 3600"),
        ("SHEETBRIDGE_POLL_INTERVAL_S", "inf", "should be a finite number"),
        ("SHEETBRIDGE_PROGRESS_INTERVAL_S", "nan", "should be a finite number"),
        ("SHEETBRIDGE_GOOGLE_TIMEOUT_S", "1e308", "less than or equal to 600"),
        ("SHEETBRIDGE_SESSION_MAX_AGE_S", "0", "greater than or equal to 60"),
        ("SHEETBRIDGE_SHEET_LATENCY_MS", "99999999999", "less than or equal to"),
        ("SHEETBRIDGE_GOOGLE_SHEETS_BASE_URL", "notaurl", "an http:// or https://"),
        ("SHEETBRIDGE_GOOGLE_SHEETS_BASE_URL", "ftp://x", "an http:// or https://"),
        ("SHEETBRIDGE_FORWARDED_ALLOW_IPS", "not-an-ip", "'not-an-ip' is no address"),
        ("SHEETBRIDGE_FORWARDED_ALLOW_IPS", "10.0.0.1,,x", "'x' is no address"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_its_value_and_the_rule(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, told: str
) -> None:
    (problem,) = _problems(monkeypatch, **{variable: value})

    assert problem.startswith(f"{variable}={value!r}: ")
    assert told in problem
    assert "\n" not in problem and "errors.pydantic.dev" not in problem


def test_every_bad_setting_is_named_not_only_the_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems = _problems(
        monkeypatch, SHEETBRIDGE_PORT="abc", SHEETBRIDGE_WORKER_CONCURRENCY="0"
    )

    assert [problem.split("=")[0] for problem in problems] == [
        "SHEETBRIDGE_PORT",
        "SHEETBRIDGE_WORKER_CONCURRENCY",
    ]


def test_progress_kept_less_often_than_a_lease_lasts_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each keep of a job's progress renews its lease: kept too seldom, every
    # running job would be taken for a dead worker's.
    (problem,) = _problems(
        monkeypatch, SHEETBRIDGE_LEASE_S="10", SHEETBRIDGE_PROGRESS_INTERVAL_S="6"
    )

    assert problem == (
        "SHEETBRIDGE_PROGRESS_INTERVAL_S=6.0 must be at most half of "
        "SHEETBRIDGE_LEASE_S=10.0: running jobs renew their lease each time "
        "their progress is kept"
    )


@pytest.mark.parametrize(
    ("environment", "told"),
    [
        (
            {
                "SHEETBRIDGE_GOOGLE_BACKOFF_BASE_S": "100",
                "SHEETBRIDGE_GOOGLE_BACKOFF_MAX_S": "1",
            },
            "SHEETBRIDGE_GOOGLE_BACKOFF_BASE_S=100.0 must be at most "
            "SHEETBRIDGE_GOOGLE_BACKOFF_MAX_S=1.0",
        ),
        (
            {"SHEETBRIDGE_SHEETS_QUOTA_BACKEND": "postgres"},
            "SHEETBRIDGE_SHEETS_QUOTA_BACKEND=postgres counts in PostgreSQL, and "
            "the database is SQLite: set DATABASE_URL to a PostgreSQL database, "
            "or leave the quota to each process (memory)",
        ),
    ],
)
def test_settings_that_disagree_with_each_other_are_one_line_naming_both(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], told: str
) -> None:
    (problem,) = _problems(monkeypatch, **environment)

    assert problem == told


def test_a_log_level_is_taken_in_any_letter_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHEETBRIDGE_LOG_LEVEL", "debug")

    assert Settings(_env_file=None).log_level == "DEBUG"


@pytest.mark.parametrize("proxies", ["127.0.0.1", "10.0.0.1, 10.0.1.0/24", "*", "::1"])
def test_proxy_addresses_and_networks_are_taken(
    monkeypatch: pytest.MonkeyPatch, proxies: str
) -> None:
    monkeypatch.setenv("SHEETBRIDGE_FORWARDED_ALLOW_IPS", proxies)

    assert Settings(_env_file=None).forwarded_allow_ips == proxies


def test_a_database_file_url_is_taken_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHEETBRIDGE_DATABASE_URL", "sqlite:////srv/book/sheetbridge.db")

    settings = Settings(_env_file=None)

    assert settings.effective_database_url == "sqlite:////srv/book/sheetbridge.db"
