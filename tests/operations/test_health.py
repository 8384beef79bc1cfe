"""Liveness, readiness, metrics, body limit, and that the API never imports torch."""

import subprocess
import sys

import pytest

from app.core.config import get_settings
from app.core.db import dispose_engine
from tests.comparisons.test_comparisons import WRITE, assert_problem, payload
from tests.conftest import ApiClient


def test_healthz_and_readyz(client: ApiClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_readyz_stays_ready_degraded_when_the_broker_is_unreachable(
    sqlite_engine: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API serves reads and writes without the broker (runs start once it is back), so a
    load balancer checking /readyz keeps it in service, and the answer says what is missing."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("READINESS_TIMEOUT_SECONDS", "0.5")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"] == {"database": "ok", "broker": "error", "sweeps": "ok"}
    assert ready.json()["unavailable"]["broker"].startswith("broker: ")


def test_readyz_reports_an_unreachable_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    get_settings.cache_clear()
    dispose_engine()
    with TestClient(create_app()) as client:
        assert client.get("/healthz").status_code == 200  # liveness does no I/O
        assert "database" in assert_problem(client.get("/readyz"), 503)["detail"]


def test_metrics_are_exposed(client: ApiClient) -> None:
    client.get("/api/v1/criteria")
    body = client.get("/metrics").text
    assert "http_requests_total" in body and 'handler="/api/v1/criteria"' in body


def test_request_metrics_name_each_route_by_its_template(client: ApiClient) -> None:
    """Route templates are remembered per method and path: every id of one route, asked once
    or again, counts under the route's template, and a path no route serves under none."""
    for video in ("yt:a", "yt:b", "yt:a"):
        client.get(f"/api/v1/videos/{video}/scores")
    client.get("/api/v1/no-such-route")
    body = client.get("/metrics").text
    assert (
        'http_requests_total{handler="/api/v1/videos/{video_id}/scores",method="GET",status="4xx"}'
        " 3.0" in body
    )
    assert 'handler="/api/v1/videos/yt:a/scores"' not in body
    assert 'handler="none"' in body


def test_too_large_body_is_413_and_stores_nothing(
    client: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    monkeypatch.setenv("MAX_BODY_BYTES", "2048")
    get_settings.cache_clear()
    small = TestClient(create_app())
    small.app.dependency_overrides = client.app.dependency_overrides  # type: ignore[attr-defined]
    auth = client.key(WRITE)
    big = [payload(user=f"u{i}") for i in range(100)]
    assert_problem(small.post("/api/v1/comparisons/bulk", json=big, headers=auth), 413)

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(10):
            yield b" " * 1024

    assert_problem(small.post("/api/v1/comparisons/bulk", content=chunks(), headers=auth), 413)
    assert client.get("/api/v1/comparisons").json()["total"] == 0


def test_api_does_not_import_torch() -> None:
    code = (
        "import app.main, app.cli.main, sys; app.main.create_app(); print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_production_refuses_the_placeholder_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("ENVIRONMENT", "production")
    get_settings.cache_clear()
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        get_settings()
    monkeypatch.setenv("SECRET_KEY", "a-real-secret")
    get_settings.cache_clear()
    assert get_settings().environment == "production"


def test_the_served_app_freezes_its_start_up_objects(sqlite_engine: object) -> None:
    import gc

    from fastapi.testclient import TestClient

    from app.main import serve_app

    try:
        application = serve_app()
        assert gc.get_freeze_count() > 0
        with TestClient(application) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
    finally:
        gc.unfreeze()


def test_an_id_beyond_the_integer_range_is_a_422_not_a_500(client) -> None:
    for path in (
        "/api/v1/training-runs/99999999999999999999",
        "/api/v1/sweeps/99999999999999999999",
        "/api/v1/sweeps/1/trials/99999999999999999999",
    ):
        response = client.get(path)
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        # ids are bounded in the document and refused by validation, before any query
        assert "less than or equal to 9223372036854775807" in response.json()["detail"]
