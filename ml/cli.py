"""Engine commands (train, generate, evaluate), standalone or mounted on the service's CLI."""

from __future__ import annotations

import json
import math
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ml.licchavi import EpochReport

# torch, pandas and the solvers are imported inside the commands: the service's CLI mounts these
# commands and must start without them.

err = Console(stderr=True)
out = Console()


class CliError(Exception):
    """A user error reported as one line on stderr with exit code 2."""


def _fail(message: str) -> typer.Exit:
    first_line = message.strip().splitlines()[0] if message.strip() else "failed"
    # Escaped: a message may hold brackets (an extra's name, a list) that are not markup.
    err.print(
        f"[red]error:[/red] {escape(first_line)}", highlight=False, soft_wrap=True, markup=True
    )
    return typer.Exit(2)


def _split_items(values: list[str] | None) -> list[str]:
    """Accept repeated options and comma-separated lists alike."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def train(
    input: Annotated[
        Path, typer.Option("--input", "-i", help="Comparisons CSV or Tournesol export .zip.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the score files.")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML/JSON file of settings.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, key=value (repeatable)."),
    ] = None,
    criteria: Annotated[
        list[str] | None,
        typer.Option(
            "--criteria", help="Criteria to train (repeat or comma-separate); default all."
        ),
    ] = None,
    solver: Annotated[
        str | None,
        typer.Option(
            help="converged (minimise J, the default, with personal scores) or faithful (v1)."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    warm_start: Annotated[
        Path | None, typer.Option("--warm-start", help="state.pt of an earlier run.")
    ] = None,
    trusted: Annotated[
        Path | None,
        typer.Option(
            "--trusted",
            help="File of trusted user ids, one a line: they get full voting rights, the"
            " untrusted contributors of each video share a capped one.",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train Licchavi on comparisons and write global/individual scores, history, config, state."""
    try:
        _train(
            input,
            output,
            config,
            overrides,
            criteria,
            solver,
            device,
            warm_start,
            trusted,
            progress,
        )
    except CliError as error:
        raise _fail(str(error)) from None


def _train(
    input_path: Path,
    output: Path,
    config_path: Path | None,
    overrides: list[str] | None,
    criteria_options: list[str] | None,
    solver: str | None,
    device: str | None,
    warm_start: Path | None,
    trusted_path: Path | None,
    show_progress: bool,
) -> None:
    from ml.config import ConfigError, load_config
    from ml.data import read_comparisons
    from ml.io import read_states, write_result
    from ml.licchavi import train as train_licchavi

    settings = list(overrides or [])
    if solver is not None:
        settings.append(f"solver={solver}")
    if device is not None:
        settings.append(f"device={device}")
    try:
        config = load_config(config_path, settings)
    except ConfigError as error:
        raise CliError(f"config: {error}") from error

    # Cheap checks first, so a bad path does not surface after minutes of reading and training.
    if criteria_options is not None and not _split_items(criteria_options):
        # `--criteria ''` (an unset variable in a script) must not mean every criterion.
        raise CliError("--criteria names no criterion")
    if not input_path.is_file():
        raise CliError(f"input file not found: {input_path}")
    if warm_start is not None and not warm_start.is_file():
        raise CliError(f"warm-start file not found: {warm_start}")
    trusted = None if trusted_path is None else read_trusted(trusted_path)
    if output.exists() and not output.is_dir():
        raise CliError(f"output is not a directory: {output}")
    started = time.perf_counter()
    try:
        dataset = read_comparisons(input_path)
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise CliError(f"cannot read {input_path}: {error}") from error
    if trusted is not None:
        dataset = dataset.with_trusted(trusted)
    read_seconds = time.perf_counter() - started

    wanted = _split_items(criteria_options) or sorted(dataset.criteria)
    unknown = [name for name in wanted if name not in dataset.criteria]
    if unknown:
        available = ", ".join(sorted(dataset.criteria)) or "none"
        raise CliError(f"unknown criterion {', '.join(unknown)} (in the data: {available})")

    initial_states = None
    if warm_start is not None:
        try:
            initial_states = read_states(warm_start)
        except ValueError as error:
            raise CliError(str(error)) from error

    with _EpochProgress(wanted, enabled=show_progress) as on_epoch:
        try:
            results = train_licchavi(
                dataset,
                config,
                criteria=wanted,
                initial_states=initial_states,
                callback=on_epoch,
            )
        except (RuntimeError, ValueError) as error:  # e.g. cuda asked for without a GPU
            raise CliError(f"training failed: {error}") from error
    train_seconds = time.perf_counter() - started - read_seconds
    try:
        write_result(output, results, config)
    except OSError as error:
        raise CliError(f"cannot write {output}: {error}") from error
    total_seconds = time.perf_counter() - started
    for name, result in results.items():
        status = "converged" if result.converged else "stopped"
        err.print(
            f"{name}: {len(result.video_ids)} videos, {len(result.user_ids)} users, "
            f"{result.epochs} epochs ({status}), stationarity {result.stationarity:.3g}, "
            f"{result.kernels} on {result.config.device}"
            + (f", {result.trusted_users} trusted users" if trusted is not None else ""),
            highlight=False,
            soft_wrap=True,
        )
    err.print(
        f"read {read_seconds:.2f} s, trained {train_seconds:.2f} s, total {total_seconds:.2f} s "
        f"-> {output}",
        highlight=False,
        soft_wrap=True,
    )


def read_trusted(path: Path) -> list[str]:
    """User ids, one a line (blank lines and lines starting with # skipped)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise CliError(f"trusted-users file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"cannot read {path}: {error}") from error
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class _EpochProgress:
    """A rich progress bar with one task per criterion, advanced by the training callback."""

    def __init__(self, criteria: list[str], enabled: bool) -> None:
        self.criteria = criteria
        self.enabled = enabled and err.is_terminal
        self.tasks: dict[str, Any] = {}
        self.completed: dict[str, int] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.bar.__enter__()
        return self.update

    def update(self, report: EpochReport) -> None:
        task = self.tasks.get(report.criterion)
        if task is None:
            task = self.bar.add_task(report.criterion, total=report.max_epochs)
            self.tasks[report.criterion] = task
        self.bar.update(task, completed=report.epoch, total=report.max_epochs)
        self.completed[report.criterion] = report.epoch

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            # A run that stops early (equilibrium reached) shows as complete.
            for criterion, task in self.tasks.items():
                self.bar.update(task, total=max(1, self.completed.get(criterion, 0)))
            self.bar.__exit__(None, None, None)


def generate(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write to.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 1000,
    videos: Annotated[int, typer.Option(help="Number of videos.")] = 9000,
    comparisons: Annotated[int, typer.Option(help="Comparisons of the main criterion.")] = 100_000,
    criteria: Annotated[
        list[str] | None, typer.Option("--criteria", help="Criteria (first is the main one).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    adversarial: Annotated[float, typer.Option(help="Fraction of adversarial users.")] = 0.0,
    adversarial_mode: Annotated[str, typer.Option(help="reverse or promote.")] = "reverse",
    indiv_noise: Annotated[float, typer.Option(help="Personal deviation from the truth.")] = 0.3,
    sharpness: Annotated[float, typer.Option(help="Scale of true scores in the model.")] = 1.0,
    pop_sigma: Annotated[float, typer.Option(help="Lognormal skew of popularity.")] = 1.0,
    scale_sigma: Annotated[
        float, typer.Option(help="Lognormal spread of how extreme each user's ratings are.")
    ] = 0.0,
    act_sigma: Annotated[float, typer.Option(help="Lognormal skew of activity.")] = 1.2,
    heldout: Annotated[
        float, typer.Option(help="Fraction of comparisons written to heldout.csv instead.")
    ] = 0.0,
) -> None:
    """Write a synthetic comparisons set with its ground truth."""
    from pydantic import ValidationError

    from ml.io import write_frame
    from ml.synthetic import SyntheticParams, split_heldout
    from ml.synthetic import generate as generate_data

    values: dict[str, Any] = {
        "n_users": users,
        "n_videos": videos,
        "n_comparisons": comparisons,
        "seed": seed,
        "fraction_adversarial": adversarial,
        "adversarial_mode": adversarial_mode,
        "indiv_noise": indiv_noise,
        "sharpness": sharpness,
        "pop_sigma": pop_sigma,
        "scale_sigma": scale_sigma,
        "act_sigma": act_sigma,
    }
    if criteria:
        values["criteria"] = _split_items(criteria)
    try:
        params = SyntheticParams.model_validate(values)
    except ValidationError as error:
        details = error.errors()[0]
        field = ".".join(str(part) for part in details["loc"]) or "parameters"
        raise _fail(f"{field}: {details['msg']}") from None
    if not 0 <= heldout < 1:
        raise _fail("heldout: must be in [0, 1)")
    if output.exists() and not output.is_dir():
        raise _fail(f"output is not a directory: {output}")
    started = time.perf_counter()
    data = generate_data(params)
    rows = f"{len(data.comparisons)} comparison rows"
    try:
        data.write(output)
        if heldout > 0:
            kept, held = split_heldout(data.comparisons, heldout, seed=params.seed)
            write_frame(output / "comparisons.csv", kept)
            write_frame(output / "heldout.csv", held)
            rows = f"{len(kept)} comparison rows + {len(held)} held out"
    except OSError as error:
        raise _fail(f"cannot write {output}: {error}") from None
    err.print(
        f"{rows}, {params.n_users} users, {params.n_videos} videos -> {output} "
        f"({time.perf_counter() - started:.1f} s)",
        highlight=False,
    )


def evaluate(
    truth: Annotated[Path, typer.Option(help="Directory with truth_global.csv (generate).")],
    scores: Annotated[Path, typer.Option(help="Directory with global_scores.csv (train).")],
    heldout: Annotated[
        Path | None, typer.Option(help="Comparisons CSV not used in training.")
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="k of the top-k precision.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Compare scores with the ground truth (and held-out comparisons)."""
    from ml.io import GLOBAL_SCORES_FILE
    from ml.metrics import evaluate as evaluate_scores

    for path in (truth / "truth_global.csv", scores / GLOBAL_SCORES_FILE, heldout):
        if path is not None and not path.is_file():
            raise _fail(f"file not found: {path}")
    try:
        report = evaluate_scores(truth, scores, heldout, top_k)
    except KeyError as error:
        raise _fail(f"cannot evaluate: missing column {error}") from None
    except ValueError as error:
        raise _fail(f"cannot evaluate: {error}") from None
    if as_json:
        # A metric without data (no video in common, say) is NaN, which JSON cannot hold: null.
        finite = {
            name: {key: _json_value(value) for key, value in row.items()}
            for name, row in report.items()
        }
        sys.stdout.write(json.dumps(finite, indent=2, allow_nan=False) + "\n")
        return
    table = Table(title="Licchavi scores vs truth")
    metric_names = list(dict.fromkeys(key for row in report.values() for key in row))
    table.add_column("metric")
    for name in report:
        table.add_column(name, justify="right")
    for metric in metric_names:
        table.add_row(metric, *[_format_value(report[name].get(metric)) for name in report])
    out.print(table)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def register(app: typer.Typer) -> None:
    """Add the train, generate and evaluate commands to an existing typer app."""
    app.command("train")(train)
    app.command("generate")(generate)
    app.command("evaluate")(evaluate)


ml_app = typer.Typer(
    name="licchavi-ml",
    help="Licchavi engine: train, generate synthetic data, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
register(ml_app)


if __name__ == "__main__":
    ml_app()
