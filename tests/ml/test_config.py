"""Configuration: defaults, files, overrides, validation messages, hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import ConfigError, LicchaviConfig, config_hash, load_config


def test_defaults_are_the_original_hyperparameters() -> None:
    config = LicchaviConfig()
    assert (config.epochs, config.w, config.w0) == (60, 1.0, 1.0)
    assert (config.lr_node, config.lr_s, config.lr_gen, config.gen_freq) == (0.9, 0.1, 0.09, 1)
    assert (config.lr_rush_duration, config.decay_rush, config.decay_fine) == (8, 0.97, 0.9)
    assert (config.min_lr_fine, config.precision, config.epsilon) == (0.001, 0.97, 0.1)
    assert (config.seed, config.device, config.dtype) == (0, "auto", "float32")
    assert config.compute_uncertainty


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("epochs: 30\nw0: 0.5\nsolver: converged\n")
    config = load_config(path, ["w0=2", "tolerance=1e-3", "compute_uncertainty=false"])
    assert (config.epochs, config.w0, config.solver) == (30, 2.0, "converged")
    assert config.tolerance == 1e-3 and not config.compute_uncertainty


def test_json_file_and_a_licchavi_section(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"licchavi": {"lr_gen": 0.05}}')
    assert load_config(path).lr_gen == 0.05


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["lr_node=0"], "lr_node"),
        (["lr_s=-1"], "lr_s"),
        (["precision=1.5"], "precision"),
        (["precision=0"], "precision"),
        (["epochs=ten"], "epochs"),
        (["solver=sgd"], "solver"),
        (["device=tpu"], "device"),
        (["dtype=float16"], "dtype"),
        (["learning_rate=1"], "learning_rate"),
        (["epochs"], "epochs"),
    ],
)
def test_invalid_settings_name_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    message = str(error.value)
    assert field in message and "\n" not in message


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        load_config(unknown)
    assert issubclass(ConfigError, ValueError)


def test_hash_is_stable_and_sensitive() -> None:
    assert config_hash(LicchaviConfig()) == config_hash(LicchaviConfig())
    assert config_hash(LicchaviConfig()) != config_hash(LicchaviConfig(w=2.0))
    assert len(config_hash(LicchaviConfig())) == 64


@pytest.mark.parametrize(
    ("content", "suffix", "expected"),
    [
        ("a: &a [1, 2]\nepochs: *a\n", ".yaml", "aliases (*a) are not allowed"),
        ("epochs: " + "[" * 5000 + "]" * 5000 + "\n", ".yaml", "nested deeper than"),
        ('{"epochs": ' + "[" * 100_000 + "]" * 100_000 + "}", ".json", "cannot parse"),
        ("w: .inf\n", ".yaml", "w: Input should be a finite number"),
        ('{"w": 1e309}', ".json", "w: Input should be a finite number"),
        ("epochs: 1000000000\n", ".yaml", "epochs: Input should be less than or equal to 100000"),
        ("w: 1\nepochs: 5\nw: 2\n", ".yaml", "key 'w' given twice (line 3)"),
        ("licchavi:\n  w: 1\n  w: 2\n", ".yaml", "key 'w' given twice"),
        ('{"w": 1, "w": 2}', ".json", "key 'w' given twice"),
    ],
)
def test_an_exhausting_or_infinite_config_file_is_a_config_error(
    tmp_path: Path, content: str, suffix: str, expected: str
) -> None:
    path = tmp_path / f"config{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
