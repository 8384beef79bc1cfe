"""Fixtures on real databases: a migrated PostgreSQL database per test session (each test rolled
back) and a migrated embedded SQLite file per test. In CI a missing server fails, never skips."""

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from alembic import command
from app.core.config import get_settings
from app.core.db import dispose_engine, get_session, make_engine
from app.identity.security import create_api_key

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_SERVER = os.environ.get("TEST_REDIS_SERVER", "redis://127.0.0.1:6379")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, error: Exception) -> None:
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def migrate(url: str) -> None:
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "alembic"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts on a fresh embedded default in its own data directory."""
    for name in ("DATABASE_URL", "CELERY_BROKER_URL", "ENVIRONMENT", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # keep a developer's .env out of the tests
    reset_caches()
    yield
    reset_caches()


def reset_caches() -> None:
    """Forget settings, pooled database connections and broker configuration."""
    from app.core.celery_app import reconfigure
    from app.identity.security import forget_verified_keys
    from app.runs.wakeups import forget_gpu_workers

    forget_verified_keys()
    forget_gpu_workers()
    get_settings.cache_clear()
    dispose_engine()
    reconfigure()


def create_database(prefix: str, options: str = "") -> tuple[str, Engine]:
    """A fresh, migrated PostgreSQL database (`options` are CREATE DATABASE clauses); returns its
    URL and an admin engine to drop it."""
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}" {options}'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        service_missing("PostgreSQL", exc)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    return url, admin


def drop_database(url: str, admin: Engine) -> None:
    name = url.rsplit("/", 1)[1]
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One migrated PostgreSQL database for the whole test session."""
    url, admin = create_database("licchavi_test")
    yield url
    drop_database(url, admin)


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_session(postgres_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test."""
    connection = postgres_engine.connect()
    transaction = connection.begin()
    session = Session(
        bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False
    )
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """The embedded default: a migrated SQLite file in this test's data directory."""
    settings = get_settings()
    settings.ensure_data_dir()
    migrate(settings.resolved_database_url)
    from app.core.db import get_engine

    yield get_engine()


@pytest.fixture(params=["postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class ApiClient(TestClient):
    """A TestClient that also knows how to mint API keys on the database under test."""

    def __init__(self, app: object, session_factory: object) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self._session_factory = session_factory

    def key(
        self, *scopes: str, user: str | None = None, expires_at: datetime | None = None
    ) -> dict[str, str]:
        """A new key's header: a service key, or with `user` a user key."""
        with self._session_factory() as session:  # type: ignore[operator]
            _row, key = create_api_key(
                session, name="test", scopes=list(scopes), user_id=user, expires_at=expires_at
            )
            session.commit()
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def client(backend: str, request: pytest.FixtureRequest) -> Iterator[ApiClient]:
    """The API on PostgreSQL (inside the rolled-back test transaction) or on embedded SQLite."""
    from app.main import create_app

    app = create_app()
    if backend == "postgres":
        session: Session = request.getfixturevalue("pg_session")

        def override() -> Iterator[Session]:
            # Like the real dependency, a failing request leaves nothing behind.
            savepoint = session.begin_nested()
            try:
                yield session
                session.flush()
                savepoint.commit()
            except BaseException:
                savepoint.rollback()
                raise

        app.dependency_overrides[get_session] = override

        class _Shared:
            def __enter__(self) -> Session:
                return session

            def __exit__(self, *exc: object) -> None:
                session.flush()

        factory: object = _Shared
    else:
        engine = request.getfixturevalue("sqlite_engine")

        def factory() -> Session:
            return Session(engine)

    with ApiClient(app, factory) as test_client:
        yield test_client


@pytest.fixture
def committed_database(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database whose commits are real (for concurrency, CLI and worker tests), set as DATABASE_URL."""
    if backend == "postgres":
        url, admin = create_database("licchavi_commit")
    else:
        settings = get_settings()
        settings.ensure_data_dir()
        url = settings.resolved_database_url
        migrate(url)
    monkeypatch.setenv("DATABASE_URL", url)
    reset_caches()
    yield url
    dispose_engine()
    if backend == "postgres":
        drop_database(url, admin)


_redis_url: str | None = None
_REDIS_CLAIM = "licchavi-tests:database:{}"


def redis_test_url() -> str:
    """A Redis database that this test session alone uses (`TEST_REDIS_URL` names one).

    Databases 1 to 12 (13 and 14 are the benches') are claimed with a key in database 0 holding
    this host and process id, so two suites on one Redis (two checkouts, CI beside a developer)
    never empty each other's queues; a claim whose process is gone on this host is taken over."""
    global _redis_url
    if _redis_url is not None:
        return _redis_url
    if os.environ.get("TEST_REDIS_URL"):
        _redis_url = os.environ["TEST_REDIS_URL"]
        return _redis_url
    import atexit
    import socket

    import redis

    owner = f"{socket.gethostname()}:{os.getpid()}"
    control = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=2)
    try:
        for number in range(1, 13):
            claim = _REDIS_CLAIM.format(number)
            if not control.set(claim, owner, nx=True, ex=24 * 3600):
                holder = (control.get(claim) or b"").decode()
                if not _claim_is_stale(holder) or control.getset(claim, owner) != holder.encode():
                    continue
            atexit.register(_release_redis_claim, claim, owner)
            _redis_url = f"{REDIS_SERVER}/{number}"
            return _redis_url
    except redis.RedisError:
        return f"{REDIS_SERVER}/15"  # unreachable: the fixture using it reports the failure
    finally:
        control.close()
    raise RuntimeError("every Redis database 1-12 is claimed by a running test session")


def _claim_is_stale(holder: str) -> bool:
    import socket

    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _release_redis_claim(claim: str, owner: str) -> None:
    import redis

    control = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=2)
    try:
        if control.get(claim) == owner.encode():
            control.delete(claim)
    except redis.RedisError:
        pass  # the claim expires by itself
    finally:
        control.close()


def emptied_redis_url() -> str:
    """This session's Redis database, emptied first (a missing Redis fails in CI)."""
    import redis

    url = redis_test_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        service_missing("Redis", exc)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_broker_url() -> str:
    """This session's Redis database for broker tests, emptied first."""
    return emptied_redis_url()
