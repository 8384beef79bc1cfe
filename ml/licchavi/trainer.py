"""Training entry points (one criterion or a dataset) with warm start, resume and callbacks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ml.config import LicchaviConfig, personalises
from ml.data import ComparisonDataset, CriterionComparisons
from ml.licchavi.devices import kernels_for, resolve_device
from ml.licchavi.faithful import FaithfulSolver, continued_progress, initial_progress
from ml.licchavi.kernels import DTypeName
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.personalisation import UserComparisons, personalise
from ml.licchavi.problem import Problem, data_fingerprint
from ml.licchavi.state import (
    LicchaviState,
    aligned_parameters,
    capture_state,
    restored_parameters,
    restored_progress,
)
from ml.licchavi.subgradient import stationarity
from ml.licchavi.uncertainty import (
    curvature_global_uncertainty,
    global_uncertainty,
    local_uncertainty,
)

if TYPE_CHECKING:
    # Imported only when a run uses the converged solver.
    from ml.licchavi.converged import ConvergedSolver

# Settings that do not change the solver's state; a checkpoint stays resumable across them (the
# personal re-fit runs after the solver, from its final state).
_NON_NUMERICAL_SETTINGS = (
    "device",
    "compute_uncertainty",
    "personalise",
    "personal_coupling",
    "personal_tastes",
)


class TrainingCancelled(Exception):
    """Raised when a callback returns False; `state` is a resumable snapshot at that epoch."""

    def __init__(self, criterion: str, epoch: int, state: LicchaviState | None = None) -> None:
        super().__init__(f"training of {criterion!r} cancelled after epoch {epoch}")
        self.criterion = criterion
        self.epoch = epoch
        self.state = state


class NotConverged(RuntimeError):
    """Raised when the converged solver stops above its stated tolerance: its scores are not
    the minimum of J and must not be published."""

    def __init__(
        self, criterion: str, stationarity: float, tolerance: float, iterations: int
    ) -> None:
        super().__init__(
            f"{criterion}: the converged solver did not converge: stationarity "
            f"{stationarity:.3g} above the tolerance {tolerance:.3g} after {iterations} iterations"
        )
        self.criterion = criterion
        self.stationarity = stationarity
        self.tolerance = tolerance
        self.iterations = iterations


@dataclass
class EpochReport:
    """What a callback sees after each epoch (faithful) or iteration (converged)."""

    criterion: str
    epoch: int
    max_epochs: int
    history_row: dict[str, float]
    elapsed: float
    _snapshot: Callable[[], LicchaviState] = field(repr=False)

    def snapshot(self) -> LicchaviState:
        """The run's current state, resumable with train_criterion(initial_state=...)."""
        return self._snapshot()


@dataclass
class CriterionResult:
    """Scores of one criterion: global per video, local per (user, video) pair, s per user."""

    criterion: str
    config: LicchaviConfig
    video_ids: np.ndarray
    global_scores: np.ndarray
    global_uncertainty: np.ndarray
    n_comparisons: np.ndarray
    n_contributors: np.ndarray
    user_ids: np.ndarray
    s: np.ndarray
    local_user_index: np.ndarray
    local_video_index: np.ndarray
    local_scores: np.ndarray
    local_uncertainty: np.ndarray
    history: list[dict[str, float]]
    epochs: int
    converged: bool
    stationarity: float
    state: LicchaviState
    kernels: str  # the array library it ran on: "numpy" or "torch"
    trusted_users: int = 0  # trusted contributors (0: no trust data, every voting right 1)


def training_fingerprint(config: LicchaviConfig) -> str:
    """Hash of the settings that shape the numbers (device and uncertainty excluded)."""
    values = config.model_dump(mode="json", exclude=set(_NON_NUMERICAL_SETTINGS))
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fresh_parameters(problem: Problem) -> Parameters:
    kernels, dtype = problem.kernels, problem.dtype
    return Parameters(
        theta=kernels.zeros(problem.n_pairs, dtype),
        rho=kernels.zeros(problem.n_videos, dtype),
        s=kernels.array(np.ones(problem.n_users), dtype),
        age=kernels.zeros(problem.n_users, "int64"),
    )


def _can_resume(
    state: LicchaviState, fingerprint: str, config: LicchaviConfig, problem: Problem
) -> bool:
    return (
        state.is_checkpoint
        and state.solver == config.solver
        and state.data_fingerprint == fingerprint
        and state.config_fingerprint == training_fingerprint(config)
        and state.theta.shape[0] == problem.n_pairs
    )


# A warm start runs only the schedule's last epochs while at most this share of the (user,
# video) pairs has no saved local score; beyond it the saved scores say too little.
WARM_CONTINUE_MAX_NEW_PAIRS = 0.1


def _warm_epochs(
    config: LicchaviConfig, parameters: Parameters, state: LicchaviState | None
) -> int | None:
    """How many of the schedule's last epochs a warm start runs; None: the whole schedule."""
    if state is None or config.solver != "faithful":
        return None
    fresh = parameters.fresh_pairs
    if fresh is not None and fresh.size > 0 and float(fresh.mean()) > WARM_CONTINUE_MAX_NEW_PAIRS:
        return None
    return config.warm_epochs


def _prepared(data: CriterionComparisons, config: LicchaviConfig) -> tuple[LicchaviConfig, Problem]:
    """The config as it runs (device resolved; the converged solver works in float64, its
    tolerance being below float32 resolution) and the problem on the kernels it runs on.

    The converged solver's problem is built from the comparisons in canonical order, so the same
    comparisons give the same scores whatever order the file or the database gave them in. The
    faithful solver keeps the input order within each user, as v1 did (its results depend on
    it). States keep the fingerprint of the data as given, which callers compare with their own.
    """
    device = resolve_device(config.device)
    dtype: DTypeName = "float64" if config.solver == "converged" else config.dtype
    resolved = config.model_copy(update={"device": device, "dtype": dtype})
    kernels = kernels_for(device, resolved.solver)
    ordered = data.canonical() if resolved.solver == "converged" else data
    return resolved, Problem.build(ordered, kernels, dtype)


def train_criterion(
    data: CriterionComparisons,
    config: LicchaviConfig,
    *,
    initial_state: LicchaviState | None = None,
    callback: Callable[[EpochReport], bool | None] | None = None,
) -> CriterionResult:
    """Train one criterion.

    initial_state: a checkpoint of an interrupted run on the same data and settings is resumed
    where it stopped; any other state (a finished run, or different data) is a warm start.
    callback: called after every epoch/iteration; returning False raises TrainingCancelled.
    """
    resolved, problem = _prepared(data, config)
    with problem.kernels.compute_scope():
        return _train_criterion(data, resolved, problem, initial_state, callback)


def finished_result(
    data: CriterionComparisons, config: LicchaviConfig, state: LicchaviState
) -> CriterionResult:
    """The result of a finished training on `data` with `config`, rebuilt from its final state
    without training (scores, uncertainties, stationarity); ValueError if the state belongs to
    other data or settings, or did not finish."""
    resolved, problem = _prepared(data, config)
    with problem.kernels.compute_scope():
        if (
            not state.finished
            or state.solver != resolved.solver
            or state.data_fingerprint != data_fingerprint(data)
            or state.config_fingerprint != training_fingerprint(resolved)
            or state.theta.shape[0] != problem.n_pairs
        ):
            raise ValueError(f"{data.criterion}: the state is not a finished run on this data")
        parameters = restored_parameters(state, problem)
        progress = restored_progress(state, problem)
        final_stationarity = stationarity(problem, parameters, resolved.w, resolved.w0, True)
        return _result(
            data, resolved, problem, parameters, progress, final_stationarity, lambda: state
        )


def _train_criterion(
    data: CriterionComparisons,
    resolved: LicchaviConfig,
    problem: Problem,
    initial_state: LicchaviState | None,
    callback: Callable[[EpochReport], bool | None] | None,
) -> CriterionResult:
    fingerprint = data_fingerprint(data)
    config_fingerprint = training_fingerprint(resolved)

    if initial_state is not None and _can_resume(initial_state, fingerprint, resolved, problem):
        parameters = restored_parameters(initial_state, problem)
        progress = restored_progress(initial_state, problem)
    else:
        if initial_state is None:
            parameters = _fresh_parameters(problem)
        else:
            parameters = aligned_parameters(initial_state, data.video_ids, data.user_ids, problem)
        warm_epochs = _warm_epochs(resolved, parameters, initial_state)
        if warm_epochs is None:
            progress = initial_progress(resolved)
        else:
            # The saved scores are already where a cold run's early epochs would take them.
            progress = continued_progress(resolved, warm_epochs)

    solver: FaithfulSolver | ConvergedSolver
    # Epochs are counted from this run's start; a faithful warm start that continues the
    # schedule begins `skipped` epochs into it (history has one row per epoch run).
    skipped = 0
    if resolved.solver == "faithful":
        solver = FaithfulSolver(problem, resolved, parameters, progress)
        skipped = max(0, progress.epoch - len(progress.history))
        max_epochs = resolved.epochs - skipped
    else:
        from ml.licchavi.converged import ConvergedSolver

        solver = ConvergedSolver(problem, resolved, parameters, progress)
        max_epochs = progress.epoch + resolved.max_iterations

    def current_parameters() -> Parameters:
        if isinstance(solver, FaithfulSolver):
            return solver.parameters
        return solver.current_parameters()

    def snapshot() -> LicchaviState:
        return capture_state(
            data.criterion,
            resolved.solver,
            data.video_ids,
            data.user_ids,
            problem,
            current_parameters(),
            progress,
            fingerprint,
            config_fingerprint,
        )

    def on_epoch(row: dict[str, float]) -> bool:
        if callback is None:
            return True

        report = EpochReport(
            criterion=data.criterion,
            epoch=progress.epoch - skipped,
            max_epochs=max_epochs,
            history_row=dict(row),
            elapsed=row["elapsed"],
            _snapshot=snapshot,
        )
        return callback(report) is not False

    progress = solver.run(on_epoch)
    if not progress.finished:
        raise TrainingCancelled(data.criterion, progress.epoch - skipped, snapshot())
    final = current_parameters()
    if isinstance(solver, FaithfulSolver):
        final_stationarity = stationarity(problem, final, resolved.w, resolved.w0, True)
    else:
        final_stationarity = solver.stationarity
        if not progress.converged:
            raise NotConverged(
                data.criterion, final_stationarity, resolved.tolerance, progress.epoch
            )
    return _result(data, resolved, problem, final, progress, final_stationarity, snapshot)


def _result(
    data: CriterionComparisons,
    config: LicchaviConfig,
    problem: Problem,
    parameters: Parameters,
    progress: Progress,
    final_stationarity: float,
    snapshot: Callable[[], LicchaviState],
) -> CriterionResult:
    n_videos = problem.n_videos
    kernels = problem.kernels
    # asarray, not astype: no copy of what already is float64 NumPy (at 5M comparisons a copy
    # per pair is 80 MB, and the personal re-fit's peak comes on top of what is held here).
    local_scores = np.asarray(kernels.to_numpy(parameters.theta), dtype=np.float64)
    s = np.asarray(kernels.to_numpy(parameters.s), dtype=np.float64)
    global_scores = np.asarray(kernels.to_numpy(parameters.rho), dtype=np.float64)
    if config.compute_uncertainty:
        local_spread = local_uncertainty(problem, parameters.theta, parameters.s)
        if config.solver == "converged":
            global_spread = curvature_global_uncertainty(problem, local_spread, config.w0)
        else:  # v1's formula, as the reference solver published it
            global_spread = global_uncertainty(problem, parameters.theta, parameters.rho)
    else:  # the original reported 0 when uncertainty was not computed
        local_spread = np.zeros(problem.n_pairs)
        global_spread = np.zeros(n_videos)
    if personalises(config):
        personal = personalise(
            UserComparisons.of(problem),
            global_scores,
            s,
            config.personal_coupling,
            shared_taste=config.personal_tastes,
        )
        local_scores = personal.theta
        if config.compute_uncertainty:
            local_spread = personal.uncertainty
    comparisons_per_video = np.bincount(
        np.concatenate([data.video_a_index, data.video_b_index]), minlength=n_videos
    )
    return CriterionResult(
        criterion=data.criterion,
        config=config,
        video_ids=data.video_ids,
        global_scores=global_scores,
        global_uncertainty=global_spread,
        n_comparisons=comparisons_per_video.astype(np.int64),
        n_contributors=np.bincount(problem.pair_video_np, minlength=n_videos).astype(np.int64),
        user_ids=data.user_ids,
        s=s,
        local_user_index=problem.pair_user_np,
        local_video_index=problem.pair_video_np,
        local_scores=local_scores,
        local_uncertainty=local_spread,
        history=[dict(row) for row in progress.history],
        # Faithful: epochs run (a warm start that continues the schedule starts inside it).
        epochs=len(progress.history) if config.solver == "faithful" else progress.epoch,
        converged=progress.converged,
        stationarity=final_stationarity,
        state=snapshot(),
        kernels=problem.kernels.backend,
        trusted_users=0 if data.trusted is None else int(data.trusted.sum()),
    )


def train(
    dataset: ComparisonDataset,
    config: LicchaviConfig,
    *,
    criteria: Sequence[str] | None = None,
    initial_states: dict[str, LicchaviState] | None = None,
    callback: Callable[[EpochReport], bool | None] | None = None,
) -> dict[str, CriterionResult]:
    """Train every criterion (or the ones named) independently, in name order."""
    names = sorted(dataset.criteria) if criteria is None else list(criteria)
    unknown = [name for name in names if name not in dataset.criteria]
    if unknown:
        raise KeyError(f"criteria not in the dataset: {', '.join(unknown)}")
    states = initial_states or {}
    return {
        name: train_criterion(
            dataset.criteria[name], config, initial_state=states.get(name), callback=callback
        )
        for name in names
    }
