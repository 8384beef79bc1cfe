"""Trusted users from the command line, on PostgreSQL and on the embedded SQLite default:
`licchavi users trust|untrust|list`, the `trusted` column of `licchavi import` (and of the
export, which round-trips byte for byte), and `licchavi train --trusted FILE`."""

from pathlib import Path

import pandas as pd
from sqlalchemy import text

from app.core.db import get_engine
from tests.cli.test_commands import licchavi
from tests.cli.test_round_trip import licchavi as licchavi_on
from tests.cli.test_round_trip import second_database
from tests.conftest import drop_database, reset_caches


def trusted_in_database() -> list[str]:
    with get_engine().connect() as connection:
        rows = connection.execute(text("SELECT external_id FROM users WHERE trusted")).all()
    return sorted(row[0] for row in rows)


def test_users_trust_untrust_and_list(committed_database: str) -> None:
    trusted = licchavi("users", "trust", "alice,bob", "carol")
    assert trusted.returncode == 0, trusted.stderr
    assert trusted_in_database() == ["alice", "bob", "carol"]
    untrusted = licchavi("users", "untrust", "bob")
    assert untrusted.returncode == 0, untrusted.stderr
    assert trusted_in_database() == ["alice", "carol"]

    listing = licchavi("users", "list", "--trusted").stdout.splitlines()
    assert listing[0].split() == ["user", "trusted", "changed"]
    assert [line.split()[:2] for line in listing[1:]] == [["alice", "yes"], ["carol", "yes"]]
    everyone = licchavi("users", "list").stdout.splitlines()[1:]
    assert [line.split()[:2] for line in everyone] == [
        ["alice", "yes"],
        ["bob", "no"],
        ["carol", "yes"],
    ]
    assert [
        line.split()[0]
        for line in licchavi("users", "list", "--untrusted").stdout.split("\n")[1:]
        if line
    ] == ["bob"]


def test_users_errors_are_one_line(committed_database: str) -> None:
    for args, expected, code in [
        (("untrust", "nobody"), "No user with id 'nobody'", 1),
        (("trust", "not a user"), "invalid user id", 2),
        (("trust", ","), "no user id given", 2),
    ]:
        result = licchavi("users", *args)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert trusted_in_database() == []


HEADER = "public_username,video_a,video_b,criteria,score,score_max,week_date"


def test_import_marks_users_and_export_writes_them_back(
    committed_database: str, backend: str, tmp_path: Path
) -> None:
    source = tmp_path / "trusted.csv"
    source.write_text(
        f"{HEADER},trusted\n"
        "alice,yt:a,yt:b,largely_recommended,3,10,2024-01-01,TRUE\n"
        "alice,yt:a,yt:c,largely_recommended,-2,10,2024-01-01,\n"
        "bob,yt:a,yt:b,largely_recommended,1,10,2024-01-01,0\n"
        "carol,yt:b,yt:c,largely_recommended,4,10,2024-01-01,1\n"
        "dave,yt:b,yt:c,largely_recommended,4,10,2024-01-01,maybe\n"
        "erin,yt:b,yt:c,largely_recommended,4,10,2024-01-01,false\n",
        encoding="utf-8",
    )
    licchavi("users", "trust", "erin")
    imported = licchavi("import", str(source))
    assert imported.returncode == 0, imported.stderr
    assert "inserted 5, updated 0, unchanged 0, rejected 1" in imported.stdout
    assert "row 5: trusted: trusted must be true, false, 1 or 0: 'maybe'" in imported.stderr
    assert trusted_in_database() == ["alice", "carol"]  # erin's mark removed by the file

    exported = licchavi("export", str(tmp_path / "first"))
    assert exported.returncode == 0, exported.stderr
    first = (tmp_path / "first" / "comparisons.csv").read_bytes()
    assert first.splitlines()[0] == f"{HEADER},trusted".encode()
    assert b"alice,yt:a,yt:b,largely_recommended,3,10,2024-01-01,true\n" in first
    assert b"bob,yt:a,yt:b,largely_recommended,1,10,2024-01-01,false\n" in first

    url, admin = second_database(backend, tmp_path)
    try:
        again = licchavi_on("import", str(tmp_path / "first" / "comparisons.csv"), database=url)
        assert again.returncode == 0 and "rejected 0" in again.stdout, again.stderr
        licchavi_on("export", str(tmp_path / "again"), database=url)
        assert (tmp_path / "again" / "comparisons.csv").read_bytes() == first
    finally:
        if admin is not None:
            reset_caches()
            drop_database(url, admin)  # type: ignore[arg-type]

    # Nobody trusted any more: the export is the public dataset's columns again.
    assert licchavi("users", "untrust", "alice", "carol").returncode == 0
    licchavi("export", str(tmp_path / "plain"))
    plain = (tmp_path / "plain" / "comparisons.csv").read_text().splitlines()
    assert plain[0] == HEADER


def test_train_with_a_trusted_users_file(tmp_path: Path) -> None:
    generated = tmp_path / "set"
    assert (
        licchavi(
            "generate", "-o", str(generated), "--users", "30", "--videos", "60",
            "--comparisons", "900", "--criteria", "largely_recommended",
        ).returncode
        == 0
    )  # fmt: skip
    users = sorted(pd.read_csv(generated / "comparisons.csv")["public_username"].astype(str))
    trusted = tmp_path / "trusted.txt"
    trusted.write_text("# operators' list\n" + "\n".join(sorted(set(users))[:10]) + "\n\n")
    runs = {}
    for name, extra in (("plain", ()), ("trusted", ("--trusted", str(trusted)))):
        result = licchavi(
            "train", "-i", str(generated / "comparisons.csv"), "-o", str(tmp_path / name),
            "--solver", "converged", "--no-progress", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        runs[name] = result
    assert "10 trusted users" in runs["trusted"].stderr
    assert "trusted users" not in runs["plain"].stderr
    plain = pd.read_csv(tmp_path / "plain" / "global_scores.csv")
    weighted = pd.read_csv(tmp_path / "trusted" / "global_scores.csv")
    assert not plain["score"].equals(weighted["score"])

    missing = licchavi("train", "-i", str(generated / "comparisons.csv"), "-o",
                       str(tmp_path / "x"), "--trusted", str(tmp_path / "none.txt"))  # fmt: skip
    assert missing.returncode == 2 and "trusted-users file not found" in missing.stderr
