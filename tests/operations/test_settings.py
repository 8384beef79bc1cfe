"""Settings an operator can get wrong are refused at start-up, each with its reason, rather than
by the first request (a 500) or never (a lease that expires between its renewals)."""

import pytest
from pydantic import ValidationError

from app.core.config import Settings
from tests.cli.test_commands import licchavi, one_line


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"LOG_LEVEL": "VERBOSE"}, "log_level"),
        ({"DATABASE_URL": "notaurl"}, "not a SQLAlchemy URL"),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "PostgreSQL or SQLite only, not 'mysql'"),
        ({"CELERY_BROKER_URL": "notaurl"}, "not a broker URL"),
        ({"RATE_LIMIT_STORAGE_URL": "nonsense"}, "not a `limits` storage URI"),
        ({"RATE_LIMIT_STORAGE_URL": "ftp://x"}, "not a `limits` storage URI"),
        ({"CORS_ALLOW_ORIGINS": "https://ok.org:99999"}, "not origins"),
        (
            {"RUN_PROGRESS_INTERVAL_SECONDS": "120", "RUN_LEASE_SECONDS": "60"},
            "RUN_PROGRESS_INTERVAL_SECONDS must be below RUN_LEASE_SECONDS",
        ),
        (
            {"SWEEP_HEARTBEAT_SECONDS": "60", "SWEEP_LEASE_SECONDS": "30"},
            "SWEEP_HEARTBEAT_SECONDS must be below SWEEP_LEASE_SECONDS",
        ),
        (
            {"TASK_SOFT_TIME_LIMIT_SECONDS": "100", "TASK_TIME_LIMIT_SECONDS": "50"},
            "TASK_SOFT_TIME_LIMIT_SECONDS must be below TASK_TIME_LIMIT_SECONDS",
        ),
    ],
)
def test_a_bad_setting_is_refused_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], reason: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        with pytest.raises(ValidationError) as refused:
            Settings()
    finally:  # before the test's own clean-up reads the settings again
        for name in env:
            monkeypatch.delenv(name)
    assert reason in str(refused.value)


def test_good_values_pass_and_the_level_takes_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@db:5432/licchavi")
    monkeypatch.setenv("RATE_LIMIT_STORAGE_URL", "redis://redis:6379/1")
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://app.example.org:8443,http://localhost:3000")
    settings = Settings()
    assert settings.log_level == "DEBUG"


def test_the_command_line_says_it_in_one_line_without_the_password() -> None:
    result = licchavi("api-key", "list", env={"DATABASE_URL": "mysql://u:secret@h/db"})
    assert result.returncode == 2
    assert one_line(result) == (
        "error: invalid settings: database_url: Value error, PostgreSQL or SQLite only, not 'mysql'"
    )
