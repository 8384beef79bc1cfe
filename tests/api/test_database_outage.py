"""The API while PostgreSQL is out of reach: every route that needs it answers a 503 problem with
Retry-After (nothing was changed; send it again), never a 500, and /readyz says why."""

import socket

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.comparisons.test_comparisons import assert_problem, payload
from tests.conftest import reset_caches
from tests.workers.test_background_outage import UNREACHABLE


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("DATABASE_URL", UNREACHABLE)
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    reset_caches()
    return TestClient(create_app())


def test_routes_answer_503_while_the_database_is_out_of_reach(unreachable: TestClient) -> None:
    with unreachable as client:
        for method, path, body in (
            ("GET", "/api/v1/criteria", None),
            ("GET", "/api/v1/comparisons", None),
            ("GET", "/api/v1/scores?criterion=largely_recommended", None),
            ("GET", "/api/v1/training-runs", None),
            ("POST", "/api/v1/comparisons", payload()),
        ):
            headers = {"Authorization": "Bearer lk_00000000_x"} if method == "POST" else {}
            response = client.request(method, path, json=body, headers=headers)
            problem = assert_problem(response, 503)
            assert problem["detail"].startswith("The database is unavailable"), path
            assert response.headers["Retry-After"] == "5"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "error"


def test_readiness_answers_in_its_timeout_when_the_database_never_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host that accepts the connection and then says nothing: /readyz answers within
    READINESS_TIMEOUT_SECONDS rather than hanging with it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nothing ever answers
        port = silent.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
        monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
        monkeypatch.setenv("READINESS_TIMEOUT_SECONDS", "1")
        reset_caches()
        with TestClient(create_app()) as client:
            ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "error"
    # The probe's own timeout, not the connection's (10 s) nor none at all (a hang).
    assert "database: no answer within 1 s" in ready.json()["detail"]
