"""The block CSV writer and the state file."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.io import read_states, write_csv


def test_write_csv_round_trips_every_column_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 2500
    floats = rng.normal(scale=3, size=n)
    floats[:4] = [0.0, -0.0000004, 123456.5, np.nan]
    columns = {
        "name": pd.Categorical.from_codes(rng.integers(0, 3, n), ["a", "b,c", 'd"e']),
        "count": rng.integers(-1000, 1000, n),
        "value": floats,
        "flag": rng.random(n) < 0.5,
        "text": np.array(["x", "é", ""] * (n // 3) + ["x"] * (n % 3), dtype=object),
    }
    path = tmp_path / "out.csv"
    write_csv(path, columns)
    back = pd.read_csv(path, keep_default_na=False, na_values={"value": [""]})
    assert list(back.columns) == list(columns)
    assert back["name"].tolist() == list(columns["name"])
    assert back["count"].tolist() == columns["count"].tolist()
    np.testing.assert_allclose(back["value"], floats, atol=5e-7, equal_nan=True)
    assert back["flag"].tolist() == columns["flag"].tolist()
    assert back["text"].tolist() == columns["text"].tolist()


def test_write_csv_text_form(tmp_path: Path) -> None:
    path = tmp_path / "small.csv"
    write_csv(path, {"v": np.array([1.5, -2.0, 0.1234567, 1e13, -np.inf]), "i": [0, -7, 10, 3, 2]})
    assert path.read_text().splitlines() == [
        "v,i",
        "1.5,0",
        "-2,-7",
        "0.123457,10",
        "10000000000000.0,3",
        "-inf,2",
    ]


def test_write_csv_refuses_ragged_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="different lengths"):
        write_csv(tmp_path / "x.csv", {"a": [1, 2], "b": [1.0]})


def test_read_states_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    path.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a saved state file"):
        read_states(path)


def test_state_files_are_read_and_written_both_ways_with_torch(tmp_path: Path) -> None:
    """write_states needs no torch, yet torch.load(weights_only=True) reads its file; a file that
    torch.save wrote is read by read_states."""
    import torch

    from ml.config import LicchaviConfig
    from ml.io import write_states
    from ml.licchavi import train_criterion
    from tests.ml.licchavi_support import reference_comparisons

    state = train_criterion(reference_comparisons("xs"), LicchaviConfig(device="cpu")).state
    ours = tmp_path / "ours.pt"
    write_states(ours, {"largely_recommended": state})
    assert torch.load(ours, weights_only=True) == {"largely_recommended": state.to_bytes()}
    theirs = tmp_path / "theirs.pt"
    torch.save({"largely_recommended": state.to_bytes()}, theirs)
    for path in (ours, theirs):
        loaded = read_states(path)["largely_recommended"]
        np.testing.assert_array_equal(loaded.theta, state.theta)
        np.testing.assert_array_equal(loaded.rng_state, state.rng_state)


def test_read_states_refuses_a_pickle_that_would_run_code(tmp_path: Path) -> None:
    import pickle
    import zipfile

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("ran",))

    path = tmp_path / "state.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("state/data.pkl", pickle.dumps({"x": Exploit()}, protocol=2))
    with pytest.raises(ValueError, match="unexpected global"):
        read_states(path)
