"""The database as the commands find it: the embedded default set up on first use, and a
database error told in one line."""

from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from app.core.config import get_settings


def migrate(revision: str = "head") -> None:
    from alembic.config import Config

    from alembic import command

    root = Path(__file__).resolve().parents[2]
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "alembic"))
    command.upgrade(config, revision)


class DataDirError(Exception):
    """The embedded default's data directory cannot be made (DATA_DIR under a file, say)."""


# What a command that opens the database answers with `database_error_message`, in one line.
DATABASE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, DataDirError)


def prepare_database() -> None:
    """The embedded default sets itself up (data directory, schema) as `serve` does; a server
    database is migrated by its operator (`licchavi db upgrade`)."""
    settings = get_settings()
    try:
        settings.ensure_data_dir()
    except OSError as exc:
        raise DataDirError(
            f"cannot create the data directory {settings.data_dir}: {exc.strerror or exc}"
        ) from exc
    if settings.resolved_database_url.startswith("sqlite"):
        migrate()


def database_error_message(exc: Exception) -> str:
    """A database error in one line (the statement stays out of it), with the likely cause."""
    from app.core.errors import database_unavailable, public_error

    if isinstance(exc, DataDirError):
        return str(exc)
    if database_unavailable(exc):
        return f"database unavailable: {public_error(exc)}"
    return f"database error: {public_error(exc)} (is it migrated? `licchavi db upgrade`)"
