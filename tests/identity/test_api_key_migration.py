"""Migration 0004 on PostgreSQL and SQLite: keys made before it keep working as service keys."""

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import Config
from sqlmodel import Session

from alembic import command
from app.core.db import make_engine
from app.identity.security import authenticate, hash_key
from tests.cli.test_commands import empty_postgres  # noqa: F401  (a fixture)
from tests.conftest import REPO


@pytest.fixture
def unmigrated_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'old.sqlite3'}"
    return str(request.getfixturevalue("empty_postgres"))


def upgrade(url: str, revision: str) -> None:
    config = Config(str(REPO / "alembic.ini"))
    config.set_main_option("script_location", str(REPO / "alembic"))
    config.attributes["database_url"] = url
    command.upgrade(config, revision)


def test_a_key_made_before_the_migration_is_a_service_key_after_it(unmigrated_url: str) -> None:
    upgrade(unmigrated_url, "0003")
    key = "lk_0ld0ld00_made-before-user-keys-existed"
    engine = make_engine(unmigrated_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO api_keys (name, prefix, key_hash, scopes, created_at)"
                    " VALUES ('old', '0ld0ld00', :hash, 'comparisons:write', CURRENT_TIMESTAMP)"
                ),
                {"hash": hash_key(key)},
            )
        upgrade(unmigrated_url, "head")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("api_keys")}
        assert {"user_id", "expires_at", "last_used_at"} <= columns
        with Session(engine) as session:
            principal = authenticate(session, f"Bearer {key}")
            session.commit()
        assert principal.user_id is None and principal.has("comparisons:write")
        with engine.connect() as connection:
            used = connection.execute(sa.text("SELECT last_used_at FROM api_keys")).scalar_one()
        assert used is not None
    finally:
        engine.dispose()
