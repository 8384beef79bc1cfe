"""The engine's command line end to end: generate → train → evaluate, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from ml.cli import ml_app, register

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated set with a held-out part, trained once for the module."""
    root = tmp_path_factory.mktemp("cli")
    generated = runner.invoke(
        ml_app,
        [
            "generate",
            "--output",
            str(root / "data"),
            "--users",
            "30",
            "--videos",
            "120",
            "--comparisons",
            "1500",
            "--criteria",
            "largely_recommended,importance",
            "--heldout",
            "0.1",
            "--seed",
            "5",
        ],
    )
    assert generated.exit_code == 0, generated.output
    trained = runner.invoke(
        ml_app,
        [
            "train",
            "--input",
            str(root / "data" / "comparisons.csv"),
            "--output",
            str(root / "scores"),
            "--set",
            "epochs=30",
            "--no-progress",
        ],
    )
    assert trained.exit_code == 0, trained.output
    return root


def test_generate_writes_data_truth_and_heldout(workspace: Path) -> None:
    data = workspace / "data"
    for name in (
        "comparisons.csv",
        "heldout.csv",
        "truth_global.csv",
        "truth_individual.csv",
        "meta.json",
    ):
        assert (data / name).is_file(), name
    kept = pd.read_csv(data / "comparisons.csv")
    held = pd.read_csv(data / "heldout.csv")
    meta = json.loads((data / "meta.json").read_text())
    assert len(kept) + len(held) == meta["n_rows"]
    assert meta["generator"]["n_users"] == 30


def test_train_writes_every_output(workspace: Path) -> None:
    scores = workspace / "scores"
    global_scores = pd.read_csv(scores / "global_scores.csv")
    assert list(global_scores.columns) == [
        "video",
        "criteria",
        "score",
        "uncertainty",
        "n_comparisons",
        "n_contributors",
    ]
    assert set(global_scores.criteria) == {"largely_recommended", "importance"}
    individual = pd.read_csv(scores / "individual_scores.csv")
    assert list(individual.columns) == [
        "public_username",
        "video",
        "criteria",
        "score",
        "uncertainty",
    ]
    history = pd.read_csv(scores / "history.csv")
    assert list(history.columns)[:3] == ["criteria", "epoch", "fit"]
    assert history.groupby("criteria").epoch.max().le(30).all()
    config = json.loads((scores / "config.json").read_text())
    assert config["epochs"] == 30
    assert config["device"] == "cpu"  # resolved, not "auto"
    from ml.io import read_states

    states = read_states(scores / "state.pt")
    assert set(states) == {"largely_recommended", "importance"}


def test_evaluate_prints_a_table_and_json(workspace: Path) -> None:
    arguments = [
        "evaluate",
        "--truth",
        str(workspace / "data"),
        "--scores",
        str(workspace / "scores"),
        "--heldout",
        str(workspace / "data" / "heldout.csv"),
    ]
    table = runner.invoke(ml_app, arguments)
    assert table.exit_code == 0, table.output
    assert "spearman" in table.stdout and "heldout_accuracy" in table.stdout
    as_json = runner.invoke(ml_app, [*arguments, "--json"])
    report = json.loads(as_json.stdout)
    main = report["largely_recommended"]
    assert main["spearman"] > 0.5
    assert main["heldout_accuracy"] > 0.6
    assert main["user_spearman"] > 0.5


def test_warm_start_from_a_saved_state(workspace: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        ml_app,
        [
            "train",
            "--input",
            str(workspace / "data" / "comparisons.csv"),
            "--output",
            str(tmp_path / "again"),
            "--criteria",
            "importance",
            "--warm-start",
            str(workspace / "scores" / "state.pt"),
            "--set",
            "epochs=5",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    trained = pd.read_csv(tmp_path / "again" / "global_scores.csv")
    assert set(trained.criteria) == {"importance"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "bogus=1"], "bogus"),
        (["--set", "epochs=-3"], "epochs"),
        (["--solver", "magic"], "solver"),
        (["--criteria", "nope"], "unknown criterion nope"),
        (["--warm-start", "/does/not/exist.pt"], "warm-start file not found"),
        # Naming nothing (an unset variable in a script) must not train every criterion.
        (["--criteria", ","], "--criteria names no criterion"),
        (["--criteria", ""], "--criteria names no criterion"),
        (
            ["--solver", "converged", "--set", "max_iterations=1"],
            "did not converge: stationarity",
        ),
    ],
)
def test_bad_train_input_is_one_line_and_exit_2(
    workspace: Path, extra: list[str], message: str
) -> None:
    result = runner.invoke(
        ml_app,
        [
            "train",
            "--input",
            str(workspace / "data" / "comparisons.csv"),
            "--output",
            str(workspace / "unused"),
            "--no-progress",
            *extra,
        ],
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in result.output


def test_missing_input_file(tmp_path: Path) -> None:
    result = runner.invoke(
        ml_app, ["train", "--input", str(tmp_path / "none.csv"), "--output", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: input file not found: {tmp_path / 'none.csv'}"
    ]


def test_output_that_is_a_file(workspace: Path) -> None:
    result = runner.invoke(
        ml_app,
        [
            "train",
            "--input",
            str(workspace / "data" / "comparisons.csv"),
            "--output",
            str(workspace / "data" / "meta.json"),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: output is not a directory: {workspace / 'data' / 'meta.json'}"
    ]


def test_unreadable_input_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("who,what\n1,2\n")
    result = runner.invoke(ml_app, ["train", "--input", str(bad), "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "missing column" in result.stderr


def test_a_damaged_zip_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04garbage")
    result = runner.invoke(ml_app, ["train", "--input", str(bad), "--output", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot read {bad}: File is not a zip file"
    ]


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return str(lines[0])


SMALL = ["--users", "10", "--videos", "50", "--comparisons", "100"]


def test_bad_generate_arguments_are_one_line(tmp_path: Path) -> None:
    seed = one_line_error(
        runner.invoke(ml_app, ["generate", "-o", str(tmp_path / "g"), *SMALL, "--seed", "-1"])
    )
    assert seed == "error: seed: Input should be greater than or equal to 0"
    existing = tmp_path / "existing_file.csv"
    existing.write_text("kept\n")
    as_file = one_line_error(runner.invoke(ml_app, ["generate", "-o", str(existing), *SMALL]))
    assert as_file == f"error: output is not a directory: {existing}"
    assert existing.read_text() == "kept\n"
    # A directory that cannot be made (its parent is a file).
    below_file = existing / "out"
    cannot = one_line_error(runner.invoke(ml_app, ["generate", "-o", str(below_file), *SMALL]))
    assert cannot.startswith(f"error: cannot write {below_file}: ")


def test_generate_says_what_its_row_count_counts(tmp_path: Path) -> None:
    result = runner.invoke(
        ml_app, ["generate", "-o", str(tmp_path / "g"), *SMALL, "--heldout", "0.2"]
    )
    assert result.exit_code == 0, result.output
    kept = len(pd.read_csv(tmp_path / "g" / "comparisons.csv"))
    held = len(pd.read_csv(tmp_path / "g" / "heldout.csv"))
    assert result.stderr.startswith(f"{kept} comparison rows + {held} held out, 10 users, ")


def test_evaluate_refuses_a_bad_top_k_and_a_heldout_file_without_comparisons(
    workspace: Path,
) -> None:
    base = ["evaluate", "--truth", str(workspace / "data"), "--scores", str(workspace / "scores")]
    for k in ("-3", "0"):
        result = runner.invoke(ml_app, [*base, "--top-k", k, "--json"])
        assert result.exit_code == 2 and "--top-k" in result.output and not result.stdout
    truth = workspace / "data" / "truth_global.csv"
    message = one_line_error(runner.invoke(ml_app, [*base, "--heldout", str(truth)]))
    assert message == (
        f"error: cannot evaluate: {truth} lacks column(s) video_a, video_b, score, public_username"
    )


def test_evaluate_json_is_strict_json_when_a_metric_has_no_data(
    workspace: Path, tmp_path: Path
) -> None:
    # A truth naming none of the scored videos: the correlations have no data.
    truth = pd.read_csv(workspace / "data" / "truth_global.csv", dtype={"video": str})
    truth["video"] = "other-" + truth["video"]
    truth.to_csv(tmp_path / "truth_global.csv", index=False)
    result = runner.invoke(
        ml_app,
        ["evaluate", "--truth", str(tmp_path), "--scores", str(workspace / "scores"), "--json"],
    )
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    report = json.loads(result.stdout, parse_constant=refuse)
    main = report["largely_recommended"]
    assert main["n_videos"] == 0 and main["spearman"] is None and main["top_k_precision"] is None


def test_evaluate_missing_directory(tmp_path: Path) -> None:
    result = runner.invoke(
        ml_app, ["evaluate", "--truth", str(tmp_path), "--scores", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: file not found")


def test_register_adds_the_commands_to_another_app() -> None:
    app = typer.Typer()

    @app.command()
    def serve() -> None:
        """Another command of the host CLI."""

    register(app)
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "train", "generate", "evaluate"):
        assert command in result.stdout


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, ml.cli; sys.exit('torch' in sys.modules or 'pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
