"""`licchavi sweep …`: submit a spec (or dry-run it), follow, steer and read a sweep."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sweep_cli = typer.Typer(help="Hyperparameter sweeps.", no_args_is_help=True)

err = Console(stderr=True)
out = Console()

T = TypeVar("T")
FINAL = ("completed", "cancelled", "failed")


def fail(message: str, code: int = 2) -> typer.Exit:
    # Escaped: a message quoting the input ("licchavi[sweeps]", a tag) is not markup.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def _session() -> Iterator[Any]:
    """A session on the configured database; service errors become one-line CLI errors."""
    from sqlmodel import Session

    from app.cli.database import DATABASE_ERRORS, database_error_message, prepare_database
    from app.core.db import get_engine
    from app.core.errors import ServiceError

    try:
        prepare_database()
        with Session(get_engine(), expire_on_commit=False) as session:
            yield session
            session.commit()
    except ServiceError as exc:
        raise fail(exc.detail) from exc
    except DATABASE_ERRORS as exc:
        raise fail(database_error_message(exc)) from exc


def _run(action: Callable[[Any], T]) -> T:
    with _session() as session:
        return action(session)


@sweep_cli.command("submit")
def submit(
    spec_file: Annotated[Path, typer.Argument(help="Sweep spec, YAML or JSON.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Expand and count; run nothing.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Submit a sweep; a worker's scheduler freezes its data and runs it."""
    from app.sweeps import control
    from app.sweeps.study import missing_extra
    from ml.sweep.spec import SpecError, parse_spec, read_spec_file

    try:
        content = read_spec_file(spec_file)
        parse_spec(content)  # the file's own faults first, before the database is asked
    except SpecError as exc:
        raise fail(str(exc)) from exc
    missing = missing_extra()
    if missing is not None:
        raise fail(missing)
    # Its base laid over the production settings, as the API does.
    try:
        spec = parse_spec(content, _run(control.production_settings))
    except SpecError as exc:
        raise fail(str(exc)) from exc
    if dry_run:
        plan = _run(lambda session: control.dry_run(session, spec))
        if as_json:
            out.print_json(json.dumps(plan, default=str))
            return
        out.print(
            f"{spec.name}: {plan['n_trials']} trial(s) × {plan['units_per_trial']} evaluation(s)"
            f" = {plan['n_evaluations']} evaluations ({spec.method}"
            f"{', with the baseline' if plan['includes_baseline'] else ''})"
        )
        for index, trial in enumerate(plan["trials"] or []):
            out.print(f"  {index:>4}  {json.dumps(trial['params'])}")
        return
    sweep = _run(lambda session: control.submit(session, spec))
    if as_json:
        out.print_json(json.dumps({"id": sweep.id, "status": sweep.status}))
    else:
        out.print(f"sweep {sweep.id} submitted ({sweep.status})")


def _status_table(sweep: Any, progress: dict[str, Any]) -> Table:
    table = Table(title=f"sweep {sweep.id} · {sweep.name} · {sweep.status}", title_justify="left")
    table.add_column("")
    table.add_column("by status")
    table.add_row("trials", _counts(progress["trials"]) + f"  (budget {sweep.max_trials})")
    table.add_row("evaluations", _counts(progress["evaluations"]))
    best = progress["best"]
    if best is not None:
        table.add_row(
            "best",
            f"trial {best['trial_id']}: {sweep.objective_metric} = {best['objective']:.4g}"
            f"  {json.dumps(best['params'])}",
        )
    if sweep.error:
        table.add_row("error", escape(sweep.error))
    return table


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


@sweep_cli.command("status")
def status(
    sweep_id: Annotated[int, typer.Argument()],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until it ends.")] = False,
    interval: Annotated[float, typer.Option(min=0.2)] = 2.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Trials and evaluations by status, and the best trial so far (live with --watch)."""
    from rich.live import Live

    from app.sweeps import control

    def read() -> tuple[Any, dict[str, Any]]:
        return _run(lambda s: (control.get_sweep(s, sweep_id), control.progress(s, sweep_id)))

    sweep, progress = read()
    if as_json:
        out.print_json(
            json.dumps(
                {"id": sweep.id, "status": sweep.status, "error": sweep.error, **progress},
                default=str,
            )
        )
        return
    if not watch:
        out.print(_status_table(sweep, progress))
        return
    with Live(_status_table(sweep, progress), console=out, refresh_per_second=4) as live:
        while sweep.status not in FINAL:
            time.sleep(interval)
            sweep, progress = read()
            live.update(_status_table(sweep, progress))


def _control(action: str) -> Callable[[int], None]:
    def command(sweep_id: Annotated[int, typer.Argument()]) -> None:
        from app.sweeps import control

        sweep = _run(lambda session: getattr(control, action)(session, sweep_id))
        out.print(f"sweep {sweep.id}: {sweep.status}")

    command.__doc__ = {
        "pause": "Start nothing new; running evaluations finish and are kept.",
        "resume": "Carry on a paused sweep.",
        "cancel": "Stop a sweep: nothing new starts, running evaluations stop.",
    }[action]
    return command


for _action in ("pause", "resume", "cancel"):
    sweep_cli.command(_action)(_control(_action))


@sweep_cli.command("promote")
def promote(
    sweep_id: Annotated[int, typer.Argument()],
    trial: Annotated[int | None, typer.Option(help="Trial id (default: the best).")] = None,
    note: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Make a trial's settings the defaults of production training runs."""
    from app.sweeps import promotion

    row = _run(lambda session: promotion.promote(session, sweep_id, trial_id=trial, note=note))
    out.print(
        f"training defaults {row.id} from trial {row.trial_id} of sweep {sweep_id} now apply"
        f" (revert with POST /api/v1/training-defaults/{row.id}/revert)"
    )


@sweep_cli.command("results")
def results(
    sweep_id: Annotated[int, typer.Argument()],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    metric: Annotated[str | None, typer.Option(help="Rank by this metric.")] = None,
    direction: Annotated[str | None, typer.Option(help="maximize or minimize")] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Write every trial to CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The leaderboard: mean over seeds/folds with its 95% interval, and the paired test
    against the incumbent (the base settings)."""
    from app.sweeps import results as service

    board = _run(
        lambda session: service.leaderboard(
            session,
            sweep_id,
            metric=metric,
            direction=direction,
            confidence=0.95,
            limit=limit,
            offset=0,
        )
    )
    if csv_file is not None:
        text = _run(lambda session: service.export_csv(session, sweep_id))
        try:
            csv_file.write_text(text)
        except OSError as exc:
            raise fail(f"cannot write {csv_file}: {exc.strerror or exc}") from exc
        err.print(f"trials written to {escape(str(csv_file))}", highlight=False)
    if as_json:
        out.print_json(json.dumps(board, default=str))
        return
    table = Table(
        title=f"sweep {sweep_id}: {board['metric']} ({board['direction']}),"
        f" {board['total']} configuration(s)",
        title_justify="left",
    )
    for column in ("rank", "trial", "n", "mean", "95% interval", "vs incumbent", "params"):
        table.add_column(column)
    for item in board["items"]:
        paired = item["vs_incumbent"]
        versus = "incumbent" if item["trial_id"] == board["incumbent_id"] else ""
        if paired is not None:
            p_value = "n/a" if paired["p_value"] is None else f"{paired['p_value']:.3g}"
            versus = f"{_number(paired['mean_difference'], '+.4f')} (p={p_value})" + (
                " better" if paired["better"] else ""
            )
        table.add_row(
            str(item["rank"]),
            str(item["trial_id"]),
            str(item["n"]),
            _number(item["mean"], ".4f"),
            f"[{_number(item['ci_low'], '.4f')}, {_number(item['ci_high'], '.4f')}]",
            versus,
            json.dumps(item["params"]),
        )
    out.print(table)


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)
