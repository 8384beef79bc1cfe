"""The commands the deployment files run, exercised natively: migrate, API keys, the API on
PostgreSQL + Redis with its healthcheck, and the worker healthcheck."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PG_ADMIN_URL, drop_database, reset_caches
from tests.helpers import free_port, stop, wait_for


def licchavi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def empty_postgres(monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, unmigrated PostgreSQL database set as DATABASE_URL."""
    import uuid

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"licchavi_empty_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        from tests.conftest import service_missing

        service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("DATABASE_URL", url)
    reset_caches()
    yield url
    reset_caches()
    drop_database(url, admin)


def test_db_upgrade_migrates_an_empty_database_and_is_idempotent(empty_postgres: str) -> None:
    for _ in range(2):
        result = licchavi("db", "upgrade")
        assert result.returncode == 0, result.stderr
    engine = sa.create_engine(empty_postgres)
    with engine.connect() as connection:
        criteria = connection.execute(sa.text("SELECT count(*) FROM criteria")).scalar_one()
    engine.dispose()
    assert criteria == 10


def test_db_upgrade_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    result = licchavi(
        "db", "upgrade", env={"DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/x"}
    )
    assert result.returncode != 0
    assert result.stderr.startswith("error: migration failed") and "Traceback" not in result.stderr


def test_production_refuses_the_placeholder_secret_from_the_cli(empty_postgres: str) -> None:
    result = licchavi("db", "upgrade", env={"ENVIRONMENT": "production"})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_api_key_create_prints_a_working_key_once(empty_postgres: str) -> None:
    assert licchavi("db", "upgrade").returncode == 0
    bad = licchavi("api-key", "create", "--scopes", "comparisons:write,launch-missiles")
    assert bad.returncode == 2 and "unknown scope" in bad.stderr and "Traceback" not in bad.stderr
    created = licchavi("api-key", "create", "--scopes", "comparisons:write", "--name", "frontend")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lk_") and "\n" not in key
    from fastapi.testclient import TestClient

    from app.main import create_app

    body = {
        "user_id": "u",
        "video_a": "a",
        "video_b": "b",
        "criteria_scores": [{"criterion": "largely_recommended", "score": 1}],
    }
    with TestClient(create_app()) as client:
        assert (
            client.post(
                "/api/v1/comparisons", json=body, headers={"Authorization": f"Bearer {key}"}
            ).status_code
            == 201
        )
        engine = sa.create_engine(empty_postgres)
        with engine.connect() as connection:
            stored = connection.execute(sa.text("SELECT key_hash FROM api_keys")).scalar_one()
        engine.dispose()
        assert key not in stored  # only a hash is kept


def test_api_and_worker_as_deployed_answer_their_healthchecks(
    empty_postgres: str, redis_broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", redis_broker_url)
    assert licchavi("db", "upgrade").returncode == 0
    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-worker",
        ]
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--queues", "cpu", "--concurrency", "1"]
    )
    try:
        wait_for(
            "the API", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 60
        )
        # The compose healthcheck of the api service, verbatim but for the port.
        probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/readyz', timeout=4)"
        assert subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0
        # The worker healthcheck: the worker answers a broadcast ping over Redis.
        hostname = wait_for(
            "the worker to answer a ping",
            lambda: _ping_worker(),
            60,
            every=1.0,
        )
        assert hostname.startswith("celery@")
    finally:
        stop(worker)
        stop(api)


def _ping_worker() -> str | None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app:celery_app",
            "inspect",
            "ping",
            "--timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in result.stdout.splitlines():
        if line.startswith("->") and "pong" in result.stdout:
            return line.split()[1].rstrip(":")
    return None


def test_import_on_a_fresh_data_directory_sets_up_the_embedded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    demo = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
    result = licchavi("import", str(demo), env={"DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    assert "inserted 1000" in result.stdout
    exported = licchavi("export", str(tmp_path / "out"), env={"DATA_DIR": str(data_dir)})
    assert exported.returncode == 0, exported.stderr
    assert "exported 1000 comparisons" in exported.stdout


def test_import_into_an_unmigrated_server_database_is_a_one_line_error(
    empty_postgres: str, tmp_path: Path
) -> None:
    demo = Path(__file__).resolve().parents[2] / "app" / "demo" / "comparisons.csv"
    result = licchavi("import", str(demo))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "licchavi db upgrade" in lines[0] and "Traceback" not in result.stderr
    assert "SELECT" not in lines[0]


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_api_key_list_and_revoke_on_a_fresh_data_directory(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "fresh")}
    listing = licchavi("api-key", "list", env=env)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split()[:2] == ["prefix", "name"]
    revoked = licchavi("api-key", "revoke", "abc", env=env)
    assert revoked.returncode == 1 and one_line(revoked) == "error: no API key 'abc'"


def test_api_key_list_and_revoke_on_an_unmigrated_server_database(empty_postgres: str) -> None:
    for args in (("list",), ("revoke", "abc")):
        message = one_line(licchavi("api-key", *args))
        assert message.startswith("error: database error: ") and "licchavi db upgrade" in message
    for args in (("users", "list"), ("users", "trust", "bob"), ("users", "untrust", "bob")):
        assert "licchavi db upgrade" in one_line(licchavi(*args))


def test_bad_service_arguments_are_refused(tmp_path: Path) -> None:
    for port in ("99999", "0", "-1"):
        result = licchavi("serve", "--port", port, env={"DATA_DIR": str(tmp_path)})
        assert result.returncode == 2 and "--port" in result.stderr, result.stderr
    for queues, message in [
        ("tpu", "error: unknown queue(s) tpu; known: cpu, gpu"),
        ("cpu,gpus", "error: unknown queue(s) gpus; known: cpu, gpu"),
        (",", "error: no queue given; known: cpu, gpu"),
    ]:
        result = licchavi("worker", "--queues", queues)
        assert result.returncode == 2 and one_line(result) == message
    for args, message in [
        (("--pool", "bogus"), "error: unknown pool 'bogus'; known: prefork, solo, threads"),
        (("--loglevel", "loud"), "error: unknown log level 'loud'; known: DEBUG, INFO, WARNING"),
    ]:
        result = licchavi("worker", *args)
        assert result.returncode == 2 and one_line(result).startswith(message)


def test_serve_on_a_taken_port_is_one_line_before_any_sign_in_link(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = licchavi(
            "serve", "--demo", "--port", str(port), env={"DATA_DIR": str(tmp_path / "served")}
        )
    assert result.returncode == 2
    assert one_line(result) == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    # Nothing was set up: no data directory, no demo key, no sign-in link.
    assert "signin" not in result.stdout and not (tmp_path / "served").exists()


def test_import_refuses_a_directory_and_a_damaged_zip(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data")}
    result = licchavi("import", str(tmp_path), env=env)
    assert result.returncode == 2 and one_line(result) == f"error: {tmp_path} is a directory"
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04garbage")
    result = licchavi("import", str(bad), env=env)
    assert result.returncode == 2
    assert one_line(result) == f"error: cannot read {bad}: File is not a zip file"


def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"DATA_DIR": str(blocker / "data")}
    expected = f"error: cannot create the data directory {blocker / 'data'}: Not a directory"
    for args in (
        ("api-key", "list"),
        ("api-key", "create", "--scopes", "runs:write"),
        ("users", "list"),
        ("export", str(tmp_path / "out")),
        ("sweep", "status", "1"),
    ):
        result = licchavi(*args, env=env)
        assert result.returncode == 2 and one_line(result) == expected, args
