"""Alembic environment: migrates the database the service settings point at."""

from sqlmodel import SQLModel

import app.models  # noqa: F401  (registers the tables on the metadata)
from alembic import context
from app.core.db import make_engine

target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = context.config.attributes.get("database_url")
    if url:
        return str(url)
    from app.core.config import get_settings

    settings = get_settings()
    settings.ensure_data_dir()
    return settings.resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = make_engine(_database_url())
    with engine.connect() as connection:
        _run_with(connection)
    engine.dispose()


def _run_with(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
