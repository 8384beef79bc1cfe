"""Hyperparameters of a Licchavi run, with validation, file loading and a stable hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ml import bounded_yaml

# Upper bounds of the settings, generous for any real run: beyond them a run would not finish
# (epochs, iterations) or its numbers would overflow (weights, learning rates).
MAX_EPOCHS = 100_000
MAX_ITERATIONS = 10_000_000
MAX_GEN_FREQ = 1_000
MAX_WEIGHT = 1e6
# Seeds are stored in 32-bit integer columns.
MAX_SEED = 2**31 - 1


class ConfigError(ValueError):
    """A configuration file or override could not be turned into a valid LicchaviConfig."""


class LicchaviConfig(BaseModel):
    """All settings of one training run; defaults are the original `hyperparameters.gin`, with
    the converged solver and personal scores (docs/solvers.md; `solver="faithful"` is v1).

    Every number is finite and bounded: a setting is stored in JSON (PostgreSQL refuses
    Infinity) and drives loops and allocations, so an absurd value must be refused here, where
    the request that carries it can still be answered, not later by a worker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    epochs: int = Field(60, ge=1, le=MAX_EPOCHS, description="maximum epochs (faithful solver)")
    warm_epochs: int | None = Field(
        10,
        ge=1,
        le=MAX_EPOCHS,
        description="faithful solver, warm start: from the saved scores, run only the"
        " schedule's last warm_epochs epochs, with the learning rates a cold run has there,"
        " unless over 10% of the (user, video) pairs are new (None: always the whole schedule,"
        " as the original's load_and_update)",
    )
    w: float = Field(
        1.0, gt=0, le=MAX_WEIGHT, description="weight of the L1 coupling between local and global"
    )
    w0: float = Field(
        1.0, gt=0, le=MAX_WEIGHT, description="weight of the global regularisation w0·Σρ²"
    )
    lr_node: float = Field(
        0.9, gt=0, le=MAX_WEIGHT, description="SGD learning rate of the local scores θ"
    )
    lr_s: float = Field(
        0.1, gt=0, le=MAX_WEIGHT, description="SGD learning rate of s_n, divided by |D_n|"
    )
    lr_gen: float = Field(
        0.09, gt=0, le=MAX_WEIGHT, description="SGD learning rate of the global scores ρ"
    )
    gen_freq: int = Field(1, ge=1, le=MAX_GEN_FREQ, description="global steps per epoch")
    lr_rush_duration: int = Field(8, ge=0, le=MAX_EPOCHS, description="epochs of the rush phase")
    decay_rush: float = Field(0.97, gt=0, le=1, description="learning-rate decay per rush epoch")
    decay_fine: float = Field(0.9, gt=0, le=1, description="decay every second epoch afterwards")
    min_lr_fine: float = Field(
        0.001, ge=0, le=MAX_WEIGHT, description="decay stops once lr_node is below this"
    )
    precision: float = Field(0.97, gt=0, le=1, description="equilibrium fraction that stops")
    epsilon: float = Field(
        0.1, gt=0, le=MAX_WEIGHT, description="perturbation of the equilibrium test"
    )
    solver: Literal["faithful", "converged"] = Field(
        "converged",
        description="'converged' minimises J to tolerance (the default); 'faithful' replays v1's"
        " SGD, the reference",
    )
    tolerance: float = Field(
        1e-5, gt=0, le=1, description="converged solver: max |minimal-norm subgradient| to stop"
    )
    max_iterations: int = Field(
        3000, ge=1, le=MAX_ITERATIONS, description="converged solver: iteration budget"
    )
    optimise_s: bool = Field(
        False,
        description="converged solver: also minimise over s_n (by default s_n stays at its"
        " starting value: 1, or the warm-start state's; see docs/solvers.md)",
    )
    personalise: bool | None = Field(
        None,
        description="re-fit each user's local scores to their own comparisons around the fixed"
        " global scores, through a personal slope (ml/licchavi/personalisation.py); None: on"
        " with the converged solver, off with the faithful one (v1's local scores)",
    )
    personal_coupling: float = Field(
        3.0,
        gt=0,
        le=MAX_WEIGHT,
        description="weight of the Gaussian tie of the personal re-fit (larger: closer to the"
        " global scores)",
    )
    personal_tastes: bool = Field(
        True,
        description="personal re-fit: tie the users whose comparisons a second shared taste"
        " explains better than the global scores to that taste instead"
        " (ml/licchavi/personalisation.py)",
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of the equilibrium test's random draws"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    compute_uncertainty: bool = True

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_and_numbers_apart(cls, value: Any, info: ValidationInfo) -> Any:
        # Pydantic's lax mode reads `true` as 1.0 and "yes" or 1 as true: in a JSON request or
        # a file those are mistakes, not settings. Numbers written as text still pass (YAML 1.1
        # reads 1e-3 as a string).
        annotation = cls.model_fields[str(info.field_name)].annotation
        kinds = set(get_args(annotation)) or {annotation}  # `int | None` or plain `int`
        if isinstance(value, bool) and kinds & {int, float}:
            raise ValueError("a boolean is not a number")
        if bool in kinds and value is not None and not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value


def personalises(config: LicchaviConfig) -> bool:
    """Whether a run re-fits local scores per user (`personalise`, or the solver's default)."""
    if config.personalise is None:
        return config.solver == "converged"
    return config.personalise


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would ("1e-3" and "true" included)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads "1e-3" as a string (it wants "1.0e-3"); numbers are what people mean.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _first_error(error: ValidationError) -> str:
    details = error.errors()[0]
    field = ".".join(str(part) for part in details["loc"]) or "config"
    message = details["msg"]
    if details["type"] == "extra_forbidden":
        message = "unknown setting"
    return f"{field}: {message} (got {details.get('input')!r})"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from error
    try:
        content = (
            bounded_yaml.load_json(text) if path.suffix == ".json" else bounded_yaml.load(text)
        )
    except (ValueError, RecursionError, yaml.YAMLError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"config file {path}: cannot parse ({first_line})") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings")
    # Accept an optional top-level "licchavi:" section so one file can hold several parts.
    if set(content) == {"licchavi"} and isinstance(content["licchavi"], dict):
        content = content["licchavi"]
    return dict(content)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> LicchaviConfig:
    """Read a YAML/JSON file (optional), apply "key=value" overrides, validate.

    Every failure raises ConfigError with a one-line message that names the field.
    """
    values: dict[str, Any] = _read_file(Path(path)) if path is not None else {}
    for override in overrides:
        key, separator, raw_value = override.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"override {override!r}: expected key=value")
        if key not in LicchaviConfig.model_fields:
            raise ConfigError(f"{key}: unknown setting (override {override!r})")
        values[key] = _parse_scalar(raw_value.strip())
    try:
        return LicchaviConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_first_error(error)) from error


def config_hash(config: LicchaviConfig) -> str:
    """sha256 of the canonical JSON of every setting (sorted keys, no whitespace)."""
    canonical = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
