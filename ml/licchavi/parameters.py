"""Trainable parameters of one criterion and the progress record shared by the solvers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ml.licchavi.kernels import Array


@dataclass
class Parameters:
    """θ per (user, video) pair, ρ per video, s and age per user (arrays of the run's kernels)."""

    theta: Array
    rho: Array
    s: Array
    age: Array
    # Pairs with no saved θ after a warm start (θ was padded with 0), on the host; None when
    # all are known.
    fresh_pairs: np.ndarray | None = None


@dataclass
class Progress:
    """Where a run stands: enough for the faithful solver to continue bit-for-bit."""

    epoch: int = 0  # epochs (faithful) or iterations (converged) completed
    lr_node: float = 0.0
    lr_gen: float = 0.0
    # The equilibrium test's generator, in torch's Generator.get_state() layout (random_draws).
    rng_state: np.ndarray | None = None
    last_global_grad: Array | None = None  # previous ∇ρ, for the grad_sp history entry
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False
    converged: bool = False
