"""`licchavi`: serve the API, run workers, migrate, import/export comparisons, manage API keys
and trusted users."""

import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console

from app.cli.database import (
    DATABASE_ERRORS,
    database_error_message,
    migrate,
    prepare_database,
)
from app.cli.sweeps import sweep_cli
from app.core.config import LogLevel, get_settings

cli = typer.Typer(
    name="licchavi",
    help="Licchavi scoring service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_cli = typer.Typer(help="Database schema.", no_args_is_help=True)
api_key_cli = typer.Typer(help="API keys.", no_args_is_help=True)
users_cli = typer.Typer(help="Users and their trust mark (voting rights).", no_args_is_help=True)
cli.add_typer(db_cli, name="db")
cli.add_typer(api_key_cli, name="api-key")
cli.add_typer(users_cli, name="users")
cli.add_typer(sweep_cli, name="sweep")

err = Console(stderr=True)
out = Console()

DEMO_DATA = Path(__file__).resolve().parents[1] / "demo" / "comparisons.csv"


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@cli.callback()
def _settings_are_valid() -> None:
    """Refuse to run any command on invalid settings, with the reason on one line."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise fail(f"invalid settings: {reasons}") from exc


def database_failure(exc: Exception) -> typer.Exit:
    """A database error as a one-line message (the statement stays out of it)."""
    return fail(database_error_message(exc))


def print_columns(lines: Sequence[tuple[str, ...]]) -> None:
    """Plain aligned columns, never wrapped or cut, so that scripts can read them."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    try:
        migrate(revision)
    except Exception as exc:
        raise fail(f"migration failed: {exc}".splitlines()[0]) from exc
    out.print(f"database at {revision}")


@api_key_cli.command("create")
def api_key_create(
    scopes: Annotated[
        list[str], typer.Option("--scopes", "-s", help="Scope(s); repeat or comma-separate.")
    ],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "cli",
    user: Annotated[
        str | None,
        typer.Option("--user", help="Bind the key to this user id (user scopes only)."),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option("--expires-in", help="Expiry: a duration (30d, 12h, 2w) or an ISO date."),
    ] = None,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from pydantic import TypeAdapter, ValidationError
    from sqlmodel import Session

    from app.api.schemas import UserId
    from app.core.db import get_engine
    from app.identity.security import UnknownScope, create_api_key
    from app.identity.service import parse_expiry

    wanted = [s.strip() for item in scopes for s in item.split(",") if s.strip()]
    try:
        user_id = None if user is None else TypeAdapter(UserId).validate_python(user)
        expires_at = None if expires_in is None else parse_expiry(expires_in)
        prepare_database()
        with Session(get_engine()) as session:
            _row, key = create_api_key(
                session, name=name, scopes=wanted, user_id=user_id, expires_at=expires_at
            )
            session.commit()
    except ValidationError as exc:
        raise fail(f"invalid user id {user!r}: {exc.errors()[0]['msg']}") from exc
    except (UnknownScope, ValueError) as exc:
        raise fail(str(exc)) from exc
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    typer.echo(key)


@api_key_cli.command("list")
def api_key_list() -> None:
    """List keys: prefix, name, scopes, user, created, last used, expiry, status."""
    from sqlmodel import Session

    from app.core.db import get_engine
    from app.identity.service import aware, key_status, list_keys

    def when(moment: datetime | None) -> str:
        return "-" if moment is None else f"{aware(moment):%Y-%m-%dT%H:%MZ}"

    lines = [("prefix", "name", "scopes", "user", "created", "last used", "expires", "status")]
    try:
        prepare_database()
        with Session(get_engine()) as session:
            rows, _total = list_keys(session)
            lines += [
                (
                    row.prefix,
                    row.name,
                    ",".join(row.scopes.split()),
                    row.user_id or "-",
                    when(row.created_at),
                    when(row.last_used_at),
                    when(row.expires_at),
                    key_status(row),
                )
                for row in rows
            ]
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    print_columns(lines)


@api_key_cli.command("revoke")
def api_key_revoke(
    key_or_prefix: Annotated[str, typer.Argument(help="The key itself or its prefix.")],
) -> None:
    """Revoke a key: every API process refuses it within seconds."""
    from sqlmodel import Session

    from app.core.db import get_engine
    from app.identity.service import UnknownKey, revoke_key

    try:
        prepare_database()
        with Session(get_engine()) as session:
            row = revoke_key(session, key_or_prefix)
            shown = f"{row.prefix} ({row.name})"
            session.commit()
    except UnknownKey as exc:
        raise fail(str(exc), code=1) from exc
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    out.print(f"revoked {shown}", highlight=False)


def _user_ids(values: list[str]) -> list[str]:
    """The ids given (repeated or comma-separated), each checked as the API checks it."""
    from pydantic import TypeAdapter, ValidationError

    from app.api.schemas import UserId

    checked = []
    for item in (part.strip() for value in values for part in value.split(",")):
        if not item:
            continue
        try:
            checked.append(TypeAdapter(UserId).validate_python(item))
        except ValidationError as exc:
            raise fail(f"invalid user id {item!r}: {exc.errors()[0]['msg']}") from exc
    if not checked:
        raise fail("no user id given")
    return checked


@users_cli.command("trust")
def users_trust(
    user_ids: Annotated[list[str], typer.Argument(help="User id(s); comma-separate or repeat.")],
) -> None:
    """Mark users trusted (a user no comparison named yet is created): full voting rights from
    the next training run."""
    from sqlmodel import Session

    from app.core.db import get_engine
    from app.runs.trust import set_trusted

    wanted = _user_ids(user_ids)
    try:
        prepare_database()
        with Session(get_engine()) as session:
            for user_id in wanted:
                set_trusted(session, user_id, True)
            session.commit()
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    out.print(f"trusted {', '.join(wanted)}", highlight=False)


@users_cli.command("untrust")
def users_untrust(
    user_ids: Annotated[list[str], typer.Argument(help="User id(s); comma-separate or repeat.")],
) -> None:
    """Remove the trust mark; exit 1 (and change nothing) if a user is unknown."""
    from sqlmodel import Session

    from app.core.db import get_engine
    from app.runs.trust import UnknownUser, untrust

    wanted = _user_ids(user_ids)
    try:
        prepare_database()
        with Session(get_engine()) as session:
            for user_id in wanted:
                untrust(session, user_id)
            session.commit()
    except UnknownUser as exc:
        raise fail(str(exc), code=1) from exc
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    out.print(f"untrusted {', '.join(wanted)}", highlight=False)


@users_cli.command("list")
def users_list(
    trusted: Annotated[
        bool | None,
        typer.Option("--trusted/--untrusted", help="Only trusted (or only untrusted) users."),
    ] = None,
) -> None:
    """List users: id, trusted, when the mark changed (one per line, plain aligned columns)."""
    from sqlmodel import Session

    from app.core.db import get_engine
    from app.runs.trust import aware, list_users

    lines = [("user", "trusted", "changed")]
    try:
        prepare_database()
        with Session(get_engine()) as session:
            rows, _total = list_users(session, trusted=trusted)
            for row in rows:
                changed = aware(row.trust_changed_at)
                lines.append(
                    (
                        row.external_id,
                        "yes" if row.trusted else "no",
                        "-" if changed is None else f"{changed:%Y-%m-%dT%H:%MZ}",
                    )
                )
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    print_columns(lines)


@cli.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="comparisons.csv or a Tournesol export .zip")],
    strict: Annotated[bool, typer.Option(help="Import nothing if any row is invalid.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000)] = 10_000,
) -> None:
    """Import comparisons (streamed, in batches); invalid rows are reported and skipped."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    from sqlalchemy.exc import SQLAlchemyError

    from app.comparisons.transfer import ImportSourceError, import_comparisons, source_size
    from app.core.db import get_engine

    if file.is_dir():
        raise fail(f"{file} is a directory")
    if not file.is_file():
        raise fail(f"{file}: no such file")
    try:
        total = source_size(file)
    except ImportSourceError as exc:
        raise fail(str(exc)) from exc
    try:
        prepare_database()
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=total)
        try:
            report = import_comparisons(
                get_engine(),
                file,
                strict=strict,
                batch_size=batch_size,
                on_read=lambda n: progress.advance(task, n),
            )
        except ImportSourceError as exc:
            raise fail(str(exc)) from exc
        except SQLAlchemyError as exc:
            raise database_failure(exc) from exc
    for rejection in report.rejections[:20]:
        where = (
            f"row {rejection.row}: {rejection.field}" if rejection.field else f"row {rejection.row}"
        )
        err.print(f"{where}: {rejection.message}", highlight=False)
    if report.rejected > 20:
        err.print(f"… and {report.rejected - 20} more rejected rows", highlight=False)
    stored = "nothing stored (--strict)" if strict and report.rejected else "stored"
    trust = f", trust marks changed {report.trust_changed}" if report.trust_changed else ""
    out.print(
        f"inserted {report.inserted}, updated {report.updated}, unchanged {report.unchanged}, "
        f"rejected {report.rejected}{trust}; {stored}",
        highlight=False,
    )
    if strict and report.rejected:
        raise typer.Exit(1)


@cli.command("export")
def export_command(directory: Annotated[Path, typer.Argument(help="Output directory.")]) -> None:
    """Write every comparison as comparisons.csv in the public-dataset format."""

    from app.comparisons.transfer import export_comparisons
    from app.core.db import get_engine

    try:
        prepare_database()
        count = export_comparisons(get_engine(), directory)
    except OSError as exc:
        raise fail(f"{directory}: {exc.strerror or exc}") from exc
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    out.print(f"exported {count} comparisons to {directory / 'comparisons.csv'}")


@cli.command("worker")
def worker_command_cli(
    queues: Annotated[str, typer.Option(help="Comma-separated queues.")] = "cpu",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    pool: Annotated[str, typer.Option(help="prefork, solo or threads (solo for GPU).")] = "prefork",
    loglevel: Annotated[str | None, typer.Option(help="Default: LOG_LEVEL.")] = None,
) -> None:
    """Run a Celery worker on QUEUES."""
    import os

    from app.cli.supervisor import worker_command
    from app.core.queues import WORKER_QUEUES

    named = [queue.strip() for queue in queues.split(",") if queue.strip()]
    unknown = [queue for queue in named if queue not in WORKER_QUEUES]
    # Work is only ever sent to these queues: a worker on another would wait forever.
    if unknown or not named:
        given = f"unknown queue(s) {', '.join(unknown)}" if unknown else "no queue given"
        raise fail(f"{given}; known: {', '.join(WORKER_QUEUES)}")
    if pool not in WORKER_POOLS:
        raise fail(f"unknown pool {pool!r}; known: {', '.join(WORKER_POOLS)}")
    levels = get_args(LogLevel)
    if loglevel is not None and loglevel.strip().upper() not in levels:
        raise fail(f"unknown log level {loglevel!r}; known: {', '.join(levels)}")
    queues = ",".join(named)
    command = worker_command(queues, concurrency, pool, loglevel or get_settings().log_level)
    os.execv(command[0], command)


# Celery's pools a worker of this service may run (prefork by default; solo for one GPU).
WORKER_POOLS = ("prefork", "solo", "threads")


@cli.command("serve")
def serve(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    demo: Annotated[
        bool, typer.Option(help="Load demo comparisons if the database is empty.")
    ] = False,
    worker: Annotated[
        bool | None,
        typer.Option(help="Run a worker beside the API (default: on the embedded broker only)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="API processes.")] = 1,
) -> None:
    """Serve the HTTP API; on the embedded default also migrate and supervise a Celery worker."""
    import uvicorn

    from app.cli.supervisor import WorkerSupervisor, worker_command
    from app.core.logs import configure_logging, logging_config

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    # Before anything is set up or printed: a sign-in link with a live key must not point at
    # another server that holds the port.
    taken = _cannot_listen(host, port)
    if taken is not None:
        raise fail(taken)
    try:
        prepare_database()
        signin = _demo_signin() if demo else None
        if demo:
            _load_demo()
    except DATABASE_ERRORS as exc:
        raise database_failure(exc) from exc
    run_worker = settings.is_embedded if worker is None else worker
    supervisor = (
        WorkerSupervisor(worker_command("cpu", 1, "prefork", settings.log_level))
        if run_worker
        else None
    )
    # uvicorn handles SIGTERM and SIGINT while it serves, then restores the handlers found here
    # and raises the signal again: with the default SIGTERM handler that killed this process
    # before the worker was stopped, leaving it running as an orphan. Raising SystemExit instead
    # unwinds to the `finally` below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    if supervisor:
        supervisor.start()
    out.print(
        f"Licchavi scoring service on http://{host}:{port}  (API docs: http://{host}:{port}/docs)"
    )
    if signin:
        out.print(
            f"Open http://{host}:{port}/#/signin?credential={signin}  (signed in as the demo user)",
            highlight=False,
            soft_wrap=True,
        )
    try:
        uvicorn.run(
            "app.main:serve_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level.lower(),
            log_config=logging_config(settings.log_level, settings.log_format),
        )
    finally:
        if supervisor:
            # A second signal must not interrupt the stop, which is bounded (SIGKILL after 20 s).
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_IGN)
            supervisor.stop()


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port now (taken, unknown host), or None."""
    import socket

    try:
        family, kind, _proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


DEMO_USER = "demo"
DEMO_KEY_NAME = "demo sign-in"


def _demo_signin() -> str:
    """A fresh key of the demo user for the printed sign-in URL; the previous run's is revoked."""
    from sqlmodel import Session, select

    from app.core.db import get_engine
    from app.identity.security import create_api_key
    from app.identity.service import revoke_key
    from app.models import ApiKey

    with Session(get_engine()) as session:
        for old in session.exec(
            select(ApiKey).where(ApiKey.name == DEMO_KEY_NAME, ApiKey.revoked_at.is_(None))  # type: ignore[union-attr]
        ):
            revoke_key(session, old.prefix)
        _row, key = create_api_key(
            session,
            name=DEMO_KEY_NAME,
            scopes=["comparisons:write", "scores:read_local", "runs:write", "sweeps:write"],
            user_id=DEMO_USER,
        )
        session.commit()
    return key


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _load_demo() -> None:
    from sqlalchemy import func
    from sqlmodel import Session, select

    from app.comparisons.transfer import import_comparisons
    from app.core.db import get_engine
    from app.models import Comparison

    engine = get_engine()
    with Session(engine) as session:
        if session.exec(select(func.count()).select_from(Comparison)).one():
            return
    report = import_comparisons(engine, DEMO_DATA)
    out.print(f"demo data: {report.inserted} comparisons loaded")


def _register_ml_commands() -> None:
    # The engine's commands (train, generate, evaluate) live with the engine; they import torch only
    # when run, so the service CLI stays light.
    try:
        from ml.cli import register
    except ImportError:
        return
    register(cli)


_register_ml_commands()


def main() -> None:
    cli()
