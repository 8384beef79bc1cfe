"""Fuzzing of the whole API from its own OpenAPI document (schemathesis's CLI), against the
served application on both deployments: the embedded default (SQLite, embedded broker) and
PostgreSQL + Redis. Every operation, with an admin key so the write routes are reached, through
schemathesis's examples, coverage (boundary and invalid values) and fuzzing phases: no 5xx, and
every answer as documented (status code declared, body valid against its schema, media type).

Bounded: `FUZZ_EXAMPLES` examples per operation in the fuzzing phase (default 20), a fixed seed
(a failure replays the same way), no shrinking: about a minute per deployment on two cores."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from app.identity.security import create_api_key
from tests.conftest import create_database, drop_database, migrate, redis_test_url, reset_caches
from tests.helpers import free_port, stop, wait_for

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("FUZZ_SEED", "1")
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "status_code_conformance",
    "content_type_conformance",
)
SCHEMATHESIS = Path(sys.executable).with_name("st")
# The API as `licchavi serve` runs it, without the worker (fuzzing needs none).
SERVER = (sys.executable, "-m", "uvicorn", "--factory", "app.main:serve_app")


@pytest.fixture(params=["sqlite", "postgres+redis"])
def deployment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The settings of one deployment, its database migrated, set in this process too."""
    environment = {"DATA_DIR": str(tmp_path / "data")}
    admin = None
    if request.param == "postgres+redis":
        url, admin = create_database("licchavi_fuzz")
        environment |= {"DATABASE_URL": url, "CELERY_BROKER_URL": redis_test_url()}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    from app.core.config import get_settings

    settings = get_settings()
    settings.ensure_data_dir()
    migrate(settings.resolved_database_url)
    yield environment
    reset_caches()
    if admin is not None:
        drop_database(environment["DATABASE_URL"], admin)


def admin_key() -> str:
    from app.core.db import get_engine

    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="fuzz", scopes=["admin"])
        session.commit()
    return key


def test_api_answers_as_documented(deployment: dict[str, str]) -> None:
    key = admin_key()
    port = free_port()
    server = subprocess.Popen(
        [*SERVER, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **deployment},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for("the API", lambda: httpx.get(f"{base}/healthz", timeout=2).status_code == 200)
        result = subprocess.run(
            [
                *(str(SCHEMATHESIS), "run", f"{base}/api/v1/openapi.json"),
                *("--header", f"Authorization: Bearer {key}", "--checks", ",".join(CHECKS)),
                *("--max-examples", str(EXAMPLES), "--seed", SEED, "--no-shrink", "--workers", "1"),
                *("--phases", "examples,coverage,fuzzing", "--generation-allow-x00", "true"),
                *("--request-timeout", "30"),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
        )
    finally:
        stop(server)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(summary)
    assert result.returncode == 0, result.stdout[-30_000:] + result.stderr[-2_000:]
    # Every operation of the document was tested (none skipped for want of a schema).
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    tested = re.search(r"Tested: (\d+)", summary)
    assert selected and tested, summary
    assert int(tested[1]) == int(selected[2]) > 30, summary
