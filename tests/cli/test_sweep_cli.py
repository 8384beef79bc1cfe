"""`licchavi sweep …` through the real command line, on a database whose commits are real."""

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml
from sqlmodel import Session, col, select
from typer.testing import CliRunner, Result

from app.cli.main import cli
from app.core.config import get_settings
from app.core.db import get_engine
from app.models import Sweep
from app.runs.training_defaults import active_defaults
from tests.conftest import reset_caches
from tests.sweeps_support import grid_spec, run_sweep_inline

# Wide enough that rich keeps every table row on one line.
runner = CliRunner(env={"COLUMNS": "240"})


def licchavi(*args: str) -> Result:
    return runner.invoke(cli, ["sweep", *args])


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    return message


def sweep_statuses() -> list[str]:
    with Session(get_engine()) as session:
        return [sweep.status for sweep in session.exec(select(Sweep).order_by(col(Sweep.id)))]


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(grid_spec(name="cli grid")))
    return path


def submitted_id(result: Result) -> int:
    assert result.exit_code == 0, result.output
    words = result.stdout.split()
    assert words[0] == "sweep" and words[2:] == ["submitted", "(preparing)"], result.stdout
    return int(words[1])


def test_a_dry_run_prints_the_count_and_stores_nothing(
    committed_database: str, spec_file: Path
) -> None:
    result = licchavi("submit", str(spec_file), "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "cli grid: 6 trial(s) × 3 evaluation(s) = 18 evaluations (grid)"
    assert [json.loads(line.split(None, 1)[1]) for line in lines[1:]] == [
        {"w": w, "w0": w0} for w in (0.5, 1.0, 2.0) for w0 in (0.5, 1.0)
    ]
    plan = json.loads(licchavi("submit", str(spec_file), "--dry-run", "--json").stdout)
    assert (plan["n_trials"], plan["n_evaluations"]) == (6, 18)
    assert sweep_statuses() == []


def test_submit_stores_the_sweep(committed_database: str, spec_file: Path) -> None:
    sweep_id = submitted_id(licchavi("submit", str(spec_file)))
    with Session(get_engine()) as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        assert (sweep.name, sweep.status, sweep.max_trials) == ("cli grid", "preparing", 6)
        assert sweep.spec["evaluation"]["generator"]["n_videos"] == 60
    again = licchavi("submit", str(spec_file), "--json")
    assert json.loads(again.stdout) == {"id": sweep_id + 1, "status": "preparing"}


def test_a_bad_spec_file_is_a_one_line_error(committed_database: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert one_line_error(licchavi("submit", str(missing))) == (
        f"error: {missing}: No such file or directory"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert f"{broken}: cannot parse (" in one_line_error(licchavi("submit", str(broken)))
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps(grid_spec(repeats={"seeds": [1, 1]})))
    assert one_line_error(licchavi("submit", str(invalid), "--dry-run")) == (
        "error: repeats.seeds: seeds must be distinct"
    )
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({"name": "h", "criterion": "nope"}))
    assert "unknown criterion 'nope'" in one_line_error(licchavi("submit", str(unknown)))
    # A dry run refuses what the submission would.
    dry = licchavi("submit", str(unknown), "--dry-run")
    assert "unknown criterion 'nope'" in one_line_error(dry)
    assert sweep_statuses() == []


def test_pause_resume_and_cancel_report_the_status(
    committed_database: str, spec_file: Path
) -> None:
    sweep_id = submitted_id(licchavi("submit", str(spec_file)))
    for action, status in (("pause", "paused"), ("resume", "preparing"), ("cancel", "cancelled")):
        result = licchavi(action, str(sweep_id))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"sweep {sweep_id}: {status}"
    assert sweep_statuses() == ["cancelled"]
    refused = one_line_error(licchavi("resume", str(sweep_id)))
    assert refused == f"error: Sweep {sweep_id} is cancelled; cannot move it to preparing."


def test_status_shows_why_a_sweep_failed(committed_database: str, spec_file: Path) -> None:
    sweep_id = submitted_id(licchavi("submit", str(spec_file)))
    assert json.loads(licchavi("status", str(sweep_id), "--json").stdout)["error"] is None
    assert "│ error" not in licchavi("status", str(sweep_id)).stdout
    with Session(get_engine()) as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        sweep.status, sweep.error = "failed", "the data [frozen] could not be read"
        session.add(sweep)
        session.commit()
    state = json.loads(licchavi("status", str(sweep_id), "--json").stdout)
    assert state["status"] == "failed" and state["error"] == "the data [frozen] could not be read"
    table = licchavi("status", str(sweep_id))
    assert table.exit_code == 0, table.output
    (row,) = [line for line in table.stdout.splitlines() if line.startswith("│ error")]
    assert "the data [frozen] could not be read" in row


def test_results_to_an_unwritable_csv_is_a_one_line_error(
    committed_database: str, spec_file: Path, tmp_path: Path
) -> None:
    sweep_id = submitted_id(licchavi("submit", str(spec_file)))
    for target in (tmp_path, tmp_path / "missing" / "trials.csv"):
        message = one_line_error(licchavi("results", str(sweep_id), "--csv", str(target)))
        assert message.startswith(f"error: cannot write {target}: "), message
    assert sweep_statuses() == ["preparing"]


def test_an_unknown_sweep_is_a_one_line_error(committed_database: str) -> None:
    for command in ("status", "results", "pause", "resume", "cancel", "promote"):
        message = one_line_error(licchavi(command, "424242"))
        assert message == "error: Sweep 424242 does not exist.", command


def test_status_results_and_promote_after_a_run(
    committed_database: str, spec_file: Path, tmp_path: Path
) -> None:
    sweep_id = submitted_id(licchavi("submit", str(spec_file)))
    nothing_yet = one_line_error(licchavi("promote", str(sweep_id)))
    assert "no succeeded trial" in nothing_yet
    assert run_sweep_inline(get_engine(), get_settings(), sweep_id) == "completed"

    status = licchavi("status", str(sweep_id))
    assert status.exit_code == 0, status.output
    assert f"sweep {sweep_id} · cli grid · completed" in status.stdout
    assert "succeeded 6  (budget 6)" in status.stdout
    assert "succeeded 18" in status.stdout
    state = json.loads(licchavi("status", str(sweep_id), "--json").stdout)
    best = state["best"]
    (best_row,) = [line for line in status.stdout.splitlines() if line.startswith("│ best")]
    assert f"│ trial {best['trial_id']}: spearman = {best['objective']:.4g}  " in best_row

    csv_file = tmp_path / "trials.csv"
    results = licchavi("results", str(sweep_id), "--csv", str(csv_file))
    assert results.exit_code == 0, results.output
    assert f"sweep {sweep_id}: spearman (maximize), 6 configuration(s)" in results.stdout
    board = json.loads(licchavi("results", str(sweep_id), "--json").stdout)
    lines = results.stdout.splitlines()
    header = next(line for line in lines if line.startswith("┃"))
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "rank",
        "trial",
        "n",
        "mean",
        "95% interval",
        "vs incumbent",
        "params",
    ]
    rows = [line for line in lines if line.startswith("│")]
    for item, row in zip(board["items"], rows, strict=True):
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        assert cells[:4] == [str(item["rank"]), str(item["trial_id"]), "3", f"{item['mean']:.4f}"]
        if item["trial_id"] == board["incumbent_id"]:
            assert cells[5] == "incumbent"
        else:
            assert cells[5].startswith(f"{item['vs_incumbent']['mean_difference']:+.4f} (p=")
    assert len(list(csv.DictReader(csv_file.open()))) == 6

    promoted = licchavi("promote", str(sweep_id))
    assert promoted.exit_code == 0, promoted.output
    with Session(get_engine()) as session:
        defaults = active_defaults(session)
        assert defaults is not None and defaults.trial_id == best["trial_id"]
    assert promoted.stdout.startswith(
        f"training defaults {defaults.id} from trial {best['trial_id']} of sweep {sweep_id}"
    )


def test_an_exhausting_spec_file_is_a_one_line_error(
    committed_database: str, tmp_path: Path
) -> None:
    cases = {
        "laughs.yaml": ("name: x\na: &a [1, 2]\nb: &b [*a, *a]\n", "aliases (*a) are not allowed"),
        "deep.yaml": ("name: x\nbase: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
        "range.json": (
            json.dumps({"name": "x", "parameters": {"w": {"low": 1, "high": 3e7, "step": 1}}}),
            "parameters.w.high: Input should be less than or equal to 1000000",
        ),
        "inf.yaml": ("name: x\nbase: {w: .inf}\n", "base.w: Input should be a finite number"),
        "tag.json": (json.dumps({"name": "x", "tags": ["a\x00b"]}), "tags: tag 'a\\x00b'"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        for extra in ((), ("--dry-run",)):
            assert expected in one_line_error(licchavi("submit", str(path), *extra)), name
    assert sweep_statuses() == []


def test_submit_without_the_sweeps_extra_is_a_one_line_error(
    committed_database: str, spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The extra's modules cannot be imported: as where it was never installed.
    monkeypatch.setitem(sys.modules, "optuna", None)
    message = one_line_error(licchavi("submit", str(spec_file)))
    assert "licchavi[sweeps]" in message and "optuna" in message
    assert sweep_statuses() == []


def test_a_fresh_embedded_default_is_set_up_and_an_unreachable_server_is_one_line(
    spec_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No table yet (a first command on a new data directory): the sweep commands set the
    embedded default up as every other command does; a database that cannot be reached is a
    one-line error, not a traceback."""
    assert not (get_settings().data_dir / "licchavi.sqlite3").exists()
    assert licchavi("submit", str(spec_file), "--dry-run").exit_code == 0
    assert submitted_id(licchavi("submit", str(spec_file))) == 1

    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/postgres")
    reset_caches()
    for args in (("submit", str(spec_file)), ("status", "1"), ("cancel", "1")):
        assert one_line_error(licchavi(*args)).startswith("error: database unavailable: ")
