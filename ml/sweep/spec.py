"""Sweep specifications: the search space, method, objectives, budget, repeats and evaluation."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ml import bounded_yaml
from ml.config import MAX_SEED, LicchaviConfig
from ml.synthetic import SyntheticParams

Method = Literal["grid", "random", "sobol", "tpe", "cmaes"]
Direction = Literal["maximize", "minimize"]
SplitBy = Literal["comparison", "user", "video"]

# Metrics an evaluation records, by the kind of evaluation that can compute them.
HELDOUT_METRICS = (
    "heldout_accuracy",
    "heldout_local_accuracy",
    "heldout_log_loss",
    "heldout_brier",
    "heldout_coverage",
)
TRUTH_METRICS = ("spearman", "kendall", "top_k_precision", "user_spearman")
COST_METRICS = ("training_seconds", "epochs", "peak_memory_bytes", "n_parameters")
# Parameters a sweep may not vary: they decide where a trial runs, not what it computes.
FIXED_SETTINGS = ("device",)

# Bounds of a spec. Each keeps what a spec can make the service build or store proportional to
# the spec's own size: a range's points and a grid's size are counted before anything is built.
MAX_SPEC_BYTES = 1_048_576  # a spec document, JSON or YAML
MAX_GRID_TRIALS = 100_000  # grid points, and trials of any sweep
MAX_VALUES = 1_000  # values or choices of one parameter
MAX_TOTAL_VALUES = 2_000  # of all parameters: a stored spec stays tens of kilobytes
MAX_PARALLEL = 256
MAX_SEEDS = 100
MAX_TAGS = 32
MAX_WALL_CLOCK_SECONDS = 365 * 24 * 3600  # a year
# A synthetic evaluation generates its data for every evaluation: bounded so that one fits a
# worker's memory.
MAX_GENERATOR = {
    "n_users": 100_000,
    "n_videos": 1_000_000,
    "n_comparisons_main": 5_000_000,
    "n_weeks": 5_200,
    "score_max": 1_000,
    "n_targets": 10_000,
}
MAX_GENERATOR_CRITERIA = 16

# Printable text, one line: PostgreSQL refuses NUL in text, and a name or tag is shown in lists.
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"
# The API's rule for criterion names (app.api.schemas.CriterionName).
CRITERION_NAME = r"^[a-z][a-z0-9_]*$"
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class SpecError(ValueError):
    """A sweep spec that cannot be read or validated; the message names the field."""


class SpecTooLarge(SpecError):
    """A spec document over MAX_SPEC_BYTES."""


class Parameter(BaseModel):
    """One swept setting: a list of values, categorical choices, or an int/float range."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    values: list[Any] | None = Field(
        None, min_length=1, max_length=MAX_VALUES, description="explicit values (grid)"
    )
    choices: list[Any] | None = Field(
        None, min_length=1, max_length=MAX_VALUES, description="categorical choices"
    )
    low: float | None = Field(None, description="range: smallest value")
    high: float | None = Field(None, description="range: largest value")
    log: bool = Field(False, description="range: sample on a log scale")
    step: float | None = Field(None, gt=0, description="range: step (needed to grid a range)")
    type: Literal["float", "int"] = Field("float", description="range: number type")

    @model_validator(mode="after")
    def _one_kind(self) -> Parameter:
        kinds = [self.values is not None, self.choices is not None, self.low is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of: values, choices, or low and high")
        if self.low is not None:
            if self.high is None:
                raise ValueError("a range needs both low and high")
            if self.high < self.low:
                raise ValueError("high must not be below low")
            if self.log and self.low <= 0:
                raise ValueError("a log range needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("a log range cannot have a step")
            # A fractional step would repeat grid points once rounded, and the samplers' integer
            # distribution would truncate it (a step of 0.5 becomes 0, which Optuna refuses).
            whole = (self.low, self.high, self.step)
            if self.type == "int" and any(v is not None and v != int(v) for v in whole):
                raise ValueError("an int range needs whole numbers for low, high and step")
            if self.step is not None and not math.isfinite((self.high - self.low) / self.step):
                raise ValueError(f"the range has over {MAX_GRID_TRIALS} points")
        elif self.high is not None:
            raise ValueError("high without low")
        listed = self.values if self.values is not None else self.choices
        for index, value in enumerate(listed or ()):
            # A value listed twice would train the same trial twice (1 and 1.0 are one value).
            if any(value == earlier for earlier in (listed or ())[:index]):
                raise ValueError(f"{value!r} is listed twice")
        return self

    @property
    def kind(self) -> Literal["values", "choices", "range"]:
        if self.values is not None:
            return "values"
        if self.choices is not None:
            return "choices"
        return "range"

    def grid_count(self) -> int:
        """How many values a grid takes, counted without building them."""
        if self.values is not None:
            return len(self.values)
        if self.choices is not None:
            return len(self.choices)
        assert self.low is not None and self.high is not None
        if self.step is None:
            raise ValueError("a grid over a range needs a step (or give values)")
        return math.floor((self.high - self.low) / self.step + 1e-9) + 1

    def grid_values(self) -> list[Any]:
        """The values a grid takes; a range needs a step."""
        count = self.grid_count()
        if self.values is not None:
            return list(self.values)
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.step is not None
        if count > MAX_GRID_TRIALS:
            raise ValueError(f"the range has {count} points (at most {MAX_GRID_TRIALS})")
        points = [self.low + index * self.step for index in range(count)]
        if self.type == "int":
            return [round(point) for point in points]
        # Round away the float noise of low + k·step (0.30000000000000004 → 0.3).
        return [float(f"{point:.12g}") for point in points]


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(max_length=64, description="a metric name recorded per evaluation")
    direction: Direction


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_trials: int | None = Field(
        None,
        ge=1,
        le=MAX_GRID_TRIALS,
        description="configurations to search (the baseline is extra); a grid's size when unset",
    )
    max_parallel: int = Field(
        2, ge=1, le=MAX_PARALLEL, description="trials evaluated at the same time"
    )
    wall_clock_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_WALL_CLOCK_SECONDS,
        description="no new evaluation starts after this long (at most a year); running ones"
        " finish",
    )


class Repeats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: list[Seed] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=MAX_SEEDS,
        description="the same seeds for every configuration (training seed; synthetic data seed)",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds


class HoldoutEvaluation(BaseModel):
    """Train on k−1 folds of the live comparisons (frozen at the sweep's start), test on one."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["holdout"] = "holdout"
    folds: int = Field(5, ge=2, le=50)
    split_by: SplitBy = "comparison"
    split_seed: int = Field(0, ge=0, le=MAX_SEED)


class SyntheticEvaluation(BaseModel):
    """Generate data per seed from the continuous Bradley–Terry model; score against the truth."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["synthetic"] = "synthetic"
    generator: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="ml.synthetic parameters (the seed comes from repeats)",
    )
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="comparisons held out for the held-out metrics"
    )

    @field_validator("generator")
    @classmethod
    def _valid_generator(cls, generator: dict[str, Any]) -> dict[str, Any]:
        if "seed" in generator:
            raise ValueError("the generator's seed comes from repeats.seeds")
        params = SyntheticParams.model_validate(generator)
        for name, limit in MAX_GENERATOR.items():
            if getattr(params, name) > limit:
                raise ValueError(f"{name} is {getattr(params, name)} (at most {limit})")
        if len(params.criteria) > MAX_GENERATOR_CRITERIA:
            raise ValueError(f"at most {MAX_GENERATOR_CRITERIA} criteria")
        for criterion in params.criteria:
            if len(criterion) > 64 or not re.fullmatch(CRITERION_NAME, criterion):
                raise ValueError(f"criterion {criterion[:64]!r}: lowercase letters, digits, _")
        return params.model_dump(mode="json", exclude={"seed"})


class EarlyStopping(BaseModel):
    """An Optuna pruner applied after each evaluation (seed or fold) of a trial."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    pruner: Literal[
        "none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon"
    ] = "none"
    n_startup_trials: int = Field(
        5, ge=0, le=MAX_GRID_TRIALS, description="trials never pruned while this few"
    )
    percentile: float = Field(25.0, gt=0, lt=100, description="percentile pruner")
    p_threshold: float = Field(0.1, gt=0, lt=1, description="wilcoxon pruner")


class SweepSpec(BaseModel):
    """A sweep, fully resolved: every default is written out when it is stored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=200, pattern=PLAIN_TEXT)
    criterion: str = Field(
        "largely_recommended", min_length=1, max_length=64, pattern=CRITERION_NAME
    )
    base: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="training settings every trial starts from",
    )
    parameters: dict[str, Parameter] = Field(
        default_factory=dict, max_length=len(LicchaviConfig.model_fields)
    )
    method: Method = "grid"
    objectives: list[Objective] = Field(
        default_factory=lambda: [Objective(metric="heldout_accuracy", direction="maximize")],
        min_length=1,
        max_length=len(HELDOUT_METRICS + TRUTH_METRICS + COST_METRICS),
    )
    budget: Budget = Field(default_factory=Budget)
    repeats: Repeats = Field(default_factory=Repeats)
    evaluation: HoldoutEvaluation | SyntheticEvaluation = Field(
        default_factory=HoldoutEvaluation, discriminator="kind"
    )
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    include_baseline: bool = Field(
        True, description="also evaluate the base settings, the incumbent trials are tested against"
    )
    sampler_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the Optuna sampler")
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)

    @field_validator("base")
    @classmethod
    def _resolved_base(cls, base: dict[str, Any]) -> dict[str, Any]:
        return LicchaviConfig.model_validate(base).model_dump(mode="json")

    @field_validator("tags")
    @classmethod
    def _plain_tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not tag or "," in tag or len(tag) > 64 or not re.fullmatch(PLAIN_TEXT, tag):
                raise ValueError(
                    f"tag {tag[:64]!r}: 1 to 64 characters, no comma, no control character"
                )
        return tags

    @model_validator(mode="after")
    def _consistent(self) -> SweepSpec:
        known = set(LicchaviConfig.model_fields) - set(FIXED_SETTINGS)
        for name, parameter in self.parameters.items():
            if name not in known:
                raise ValueError(f"parameters.{name[:64]}: not a training setting")
            _check_against_setting(name, parameter)
            if self.method == "grid" and parameter.kind == "range" and parameter.step is None:
                raise ValueError(f"parameters.{name}: a grid over a range needs a step")
        listed = sum(
            len(parameter.values or parameter.choices or ())
            for parameter in self.parameters.values()
        )
        if listed > MAX_TOTAL_VALUES:
            raise ValueError(f"parameters: {listed} values in all (at most {MAX_TOTAL_VALUES})")
        if self.method != "grid" and not self.parameters:
            raise ValueError("method: a sampler needs at least one parameter")
        if self.method == "cmaes":
            for name, parameter in self.parameters.items():
                if parameter.kind != "range":
                    raise ValueError(f"parameters.{name}: cmaes samples ranges only")
        allowed = set(self.metric_names())
        for objective in self.objectives:
            if objective.metric not in allowed:
                raise ValueError(
                    f"objectives: {objective.metric!r} is not recorded by a "
                    f"{self.evaluation.kind} evaluation (one of {', '.join(sorted(allowed))})"
                )
        if self.method == "grid":
            # Counted, not built: a range of a million steps is refused before it exists.
            size = self.grid_size()
            if size > MAX_GRID_TRIALS:
                raise ValueError(
                    f"parameters: the grid has {size} points (at most {MAX_GRID_TRIALS})"
                )
            if self.budget.max_trials is None:
                self.budget.max_trials = size
        elif self.budget.max_trials is None:
            self.budget.max_trials = 20
        return self

    def metric_names(self) -> list[str]:
        names = list(HELDOUT_METRICS) + list(COST_METRICS)
        if self.evaluation.kind == "synthetic":
            names += list(TRUTH_METRICS)
        return names

    def grid_size(self) -> int:
        return math.prod(parameter.grid_count() for parameter in self.parameters.values())

    def grid(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The grid's points (the first `limit` of them), in a stable order (parameters by name,
        values as given)."""
        names = sorted(self.parameters)
        axes = [self.parameters[name].grid_values() for name in names]
        points = itertools.islice(itertools.product(*axes), limit)
        return [dict(zip(names, point, strict=True)) for point in points]

    def grid_point(self, index: int) -> dict[str, Any]:
        """grid()[index], without building the others."""
        point: dict[str, Any] = {}
        for name in sorted(self.parameters, reverse=True):
            axis = self.parameters[name].grid_values()
            index, position = divmod(index, len(axis))
            point[name] = axis[position]
        return dict(sorted(point.items()))

    def grid_index(self, point: Mapping[str, Any]) -> int | None:
        """The first position of `point` in grid(), None when it is not a grid point."""
        index = 0
        for name in sorted(self.parameters):
            axis = self.parameters[name].grid_values()
            if point[name] not in axis:
                return None
            index = index * len(axis) + axis.index(point[name])
        return index

    def base_params(self) -> dict[str, Any]:
        """The swept parameters' values in the base settings."""
        return {name: self.base[name] for name in sorted(self.parameters)}

    def needs_baseline(self, max_trials: int) -> bool:
        """Whether the base settings need a trial of their own: asked for, and not among the
        grid points the budget reaches (the base point may lie beyond them)."""
        if not self.include_baseline:
            return False
        if self.method != "grid":
            return True
        index = self.grid_index(self.base_params())
        return index is None or index >= max_trials

    @property
    def units_per_trial(self) -> int:
        """Evaluations of one configuration: seeds × folds (holdout) or seeds (synthetic)."""
        folds = self.evaluation.folds if isinstance(self.evaluation, HoldoutEvaluation) else 1
        return len(self.repeats.seeds) * folds

    def units(self) -> list[tuple[int, int]]:
        """(seed, fold) of each evaluation of a trial, in unit_index order."""
        if isinstance(self.evaluation, HoldoutEvaluation):
            return [
                (seed, fold) for seed in self.repeats.seeds for fold in range(self.evaluation.folds)
            ]
        return [(seed, 1) for seed in self.repeats.seeds]

    def trial_config(self, params: dict[str, Any], seed: int) -> LicchaviConfig:
        """The training settings of one evaluation: base, then the trial's values, then the seed."""
        return LicchaviConfig.model_validate({**self.base, **params, "seed": seed})

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@cache
def _setting_type(name: str) -> TypeAdapter[Any]:
    """The type and bounds of one training setting, to check a value without a whole config."""
    field = LicchaviConfig.model_fields[name]
    return TypeAdapter(
        Annotated[field.annotation, field],  # type: ignore[arg-type]
        config=ConfigDict(allow_inf_nan=False),
    )


def _number_type(name: str) -> type | None:
    """int or float when the setting is a number, else None."""
    annotation = LicchaviConfig.model_fields[name].annotation
    numbers = [
        kind for kind in typing.get_args(annotation) or (annotation,) if kind in (int, float)
    ]
    return numbers[0] if numbers else None


def _check_against_setting(name: str, parameter: Parameter) -> None:
    """Every value a parameter can take is a valid value of its setting (type and bounds), so a
    trial never fails for a value the spec allowed; values are stored as the setting reads them
    (YAML's "1e-3" becomes 0.001)."""
    setting = _setting_type(name)

    def checked(where: str, value: Any) -> Any:
        try:
            return setting.validate_python(value)
        except ValidationError as error:
            raise ValueError(
                f"parameters.{name}.{where}: {error.errors()[0]['msg']} (got {str(value)[:64]!r})"
            ) from None

    for kind in ("values", "choices"):
        given = getattr(parameter, kind)
        if given is not None:
            setattr(parameter, kind, [checked(f"{kind}.{i}", v) for i, v in enumerate(given)])
    if parameter.kind == "range":
        number = _number_type(name)
        if number is None:
            raise ValueError(f"parameters.{name}: not a number; give values or choices")
        if number is int and parameter.type != "int":
            raise ValueError(f"parameters.{name}: a whole-number setting needs type: int")
        checked("low", parameter.low)
        checked("high", parameter.high)


def spec_hash(spec: SweepSpec) -> str:
    canonical = json.dumps(spec.resolved(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# A check across fields starts its message with the field it is about: "parameters.w: …".
_NAMED_FIELD = re.compile(r"([A-Za-z_][\w.]*): (.+)", re.DOTALL)


def error_location(details: Mapping[str, Any]) -> tuple[list[str], str]:
    """Where a validation error is in the spec as written, and its message.

    The evaluation union's tag is not a key of the document (evaluation.holdout.folds is
    written evaluation.folds), and a check across fields names its field in the message.
    """
    path = [str(part) for part in details["loc"]]
    if len(path) > 1 and path[0] == "evaluation" and path[1] in ("holdout", "synthetic"):
        del path[1]
    message = str(details["msg"]).removeprefix("Value error, ")
    if details["type"] == "extra_forbidden":
        message = "unknown field"
    named = _NAMED_FIELD.fullmatch(message)
    if not path and named:
        path, message = named[1].split("."), named[2]
    return path, message


def first_error(error: ValidationError) -> str:
    path, message = error_location(error.errors()[0])
    return f"{'.'.join(path) or 'spec'}: {message}"


def on_defaults(content: Any, defaults: dict[str, Any] | None) -> Any:
    """The spec mapping with its `base` laid over `defaults` (the production training settings,
    as a run's settings are), so that the incumbent is what production trains with; anything
    that is not a mapping is left for validation to refuse."""
    if defaults is None or not isinstance(content, dict):
        return content
    base = content.get("base", {})
    if not isinstance(base, dict):
        return content
    return {**content, "base": {**defaults, **base}}


def parse_spec(content: dict[str, Any], defaults: dict[str, Any] | None = None) -> SweepSpec:
    """Validate a spec mapping (its `base` over `defaults`); SpecError names the first bad
    field."""
    try:
        return SweepSpec.model_validate(on_defaults(content, defaults))
    except ValidationError as error:
        raise SpecError(first_error(error)) from error


def load_spec(path: str | Path, defaults: dict[str, Any] | None = None) -> SweepSpec:
    """Read a YAML or JSON spec file (its `base` over `defaults`)."""
    return parse_spec(read_spec_file(path), defaults)


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML or JSON spec file holds, not yet validated; SpecError in one line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"{path}: {error.strerror or error}") from error
    try:
        content = read_document(text, "json" if path.suffix == ".json" else "yaml")
    except SpecTooLarge as error:
        raise SpecError(f"{path}: {error}") from error
    except SpecError as error:
        raise SpecError(f"{path}: cannot parse ({error})") from error
    if not isinstance(content, dict):
        raise SpecError(f"{path}: expected a mapping")
    return content


def read_document(text: str | bytes, kind: Literal["json", "yaml"]) -> Any:
    """What a spec document holds, read within the bounds above (size; for YAML: no aliases,
    nesting and node count); SpecError gives the reason in one line."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecTooLarge(f"a spec is at most {MAX_SPEC_BYTES} bytes (got {len(text)})")
    try:
        return bounded_yaml.load_json(text) if kind == "json" else bounded_yaml.load(text)
    except (ValueError, RecursionError, bounded_yaml.BoundedYamlError) as error:
        raise SpecError(
            str(error).splitlines()[0] if str(error) else type(error).__name__
        ) from error
