"""`licchavi import` / `export` on the real Tournesol export, through the installed CLI."""

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core.db import get_engine
from tests.conftest import SHARED_DATA

TINY = SHARED_DATA / "tiny_tournesol.zip"
TINY_ROWS = 38_387


def licchavi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300
    )


def comparison_count() -> int:
    with get_engine().connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM comparisons")).scalar_one())


@pytest.mark.slow
def test_import_tiny_tournesol_then_export_reimports_identically(
    committed_database: str, tmp_path: Path
) -> None:
    first = licchavi("import", str(TINY))
    assert first.returncode == 0, first.stderr
    assert f"inserted {TINY_ROWS}, updated 0, unchanged 0, rejected 0" in first.stdout
    assert comparison_count() == TINY_ROWS

    exported = licchavi("export", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    lines = (tmp_path / "out" / "comparisons.csv").read_text().splitlines()
    assert lines[0] == "public_username,video_a,video_b,criteria,score,score_max,week_date"
    assert len(lines) == TINY_ROWS + 1

    again = licchavi("import", str(tmp_path / "out" / "comparisons.csv"))
    assert again.returncode == 0, again.stderr
    assert f"inserted 0, updated 0, unchanged {TINY_ROWS}, rejected 0" in again.stdout
    assert comparison_count() == TINY_ROWS


def test_import_reports_and_skips_bad_rows(committed_database: str, tmp_path: Path) -> None:
    source = tmp_path / "c.csv"
    source.write_text(
        "public_username,video_a,video_b,criteria,score,score_max\n"
        "alice,v1,v2,largely_recommended,3,10\n"
        "alice,v1,v3,largely_recommended,30,10\n"
        "bob,v1,v2,nope,1,\n"
        "bob,v1,v2,importance,-2,\n"
    )
    result = licchavi("import", str(source))
    assert result.returncode == 0, result.stderr
    assert "inserted 2, updated 0, unchanged 0, rejected 2" in result.stdout
    assert "row 2: score" in result.stderr and "row 3: criteria" in result.stderr
    strict = licchavi("import", "--strict", str(source))
    assert strict.returncode == 1
    assert comparison_count() == 2


def test_import_bad_input_is_a_one_line_error(committed_database: str, tmp_path: Path) -> None:
    missing = licchavi("import", str(tmp_path / "nope.csv"))
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "no such file" in missing.stderr
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("a,b\n1,2\n")
    result = licchavi("import", str(bad_header))
    assert result.returncode != 0 and "lacks column" in result.stderr
    assert "Traceback" not in result.stderr
    assert comparison_count() == 0


def test_import_reports_a_field_over_the_csv_limit_and_goes_on(
    committed_database: str, tmp_path: Path
) -> None:
    source = tmp_path / "long.csv"
    source.write_text(
        "public_username,video_a,video_b,criteria,score,score_max\n"
        "alice,v1,v2,largely_recommended,3,10\n"
        f"alice,v1,{'x' * 140_000},largely_recommended,3,10\n"
        "alice,v1,v3,largely_recommended,1,1e6\n"
        "bob,v1,v3,largely_recommended,-2,\n"
    )
    result = licchavi("import", str(source))
    assert result.returncode == 0, result.stderr
    assert "inserted 2, updated 0, unchanged 0, rejected 2" in result.stdout
    assert "row 2: unreadable CSV row: field larger than field limit" in result.stderr
    assert "row 3: score_max" in result.stderr
    assert comparison_count() == 2
