"""Property-based fuzzing of the whole API from its own OpenAPI document (schemathesis), on both
deployments: the embedded default (SQLite, embedded broker) and PostgreSQL + Redis. Every
operation, with an admin key so the write routes are reached: no 5xx, and every answer matches
the document (status code declared, body valid against its schema, media type as declared).

Bounded: a fixed number of derandomized examples per operation (`FUZZ_EXAMPLES`, default 12),
so a run takes a few minutes on two cores and a failure replays the same way."""

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session

from app.core.security import create_api_key
from tests.conftest import create_database, drop_database, migrate, redis_test_url, reset_caches

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
# No shrinking: it would cost minutes on a failure; derandomized runs replay the same examples.
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.fixture(scope="module", params=["sqlite", "postgres+redis"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """The environment of one deployment, its database migrated and kept for the module."""
    if request.param == "sqlite":
        data_dir = tmp_path_factory.mktemp("fuzz") / "data"
        data_dir.mkdir()
        environment = {"DATA_DIR": str(data_dir)}
        yield environment
        return
    url, admin = create_database("licchavi_fuzz")
    environment = {
        "DATA_DIR": str(tmp_path_factory.mktemp("fuzz") / "data"),
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": redis_test_url(),
    }
    yield environment
    reset_caches()
    drop_database(url, admin)


@pytest.fixture
def api_schema(deployment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The application on the deployment, as schemathesis loads it (from its own document)."""
    for name, value in deployment.items():
        monkeypatch.setenv(name, value)
    reset_caches()
    from app.core.config import get_settings
    from app.core.db import get_engine
    from app.main import create_app

    settings = get_settings()
    settings.ensure_data_dir()
    migrate(settings.resolved_database_url)
    with Session(get_engine()) as session:
        _row, key = create_api_key(session, name="fuzz", scopes=["admin"])
        session.commit()
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", create_app())
    schema.fuzz_headers = {"Authorization": f"Bearer {key}"}  # type: ignore[attr-defined]
    return schema


def test_api_answers_as_documented(api_schema: Any) -> None:
    """Every operation, positive then negative examples; one report lists every failure."""
    headers = api_schema.fuzz_headers
    failures: list[str] = []
    operations = 0

    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation.as_strategy(generation_mode=mode), headers)
            except Unsatisfiable:
                # an operation without parameters or body has no invalid input to send
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (AssertionError, BaseExceptionGroup) as exc:
                # every operation is run; the failures are listed together below
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert operations > 30  # the whole document was read
    assert not failures, f"{len(failures)} failing operation(s):\n\n" + "\n\n".join(failures)


def _fuzz(strategy: Any, headers: dict[str, str]) -> None:
    @SETTINGS
    @given(case=strategy)
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    run()
