"""Trainable parameters of one criterion and the progress record shared by the solvers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Parameters:
    """θ per (user, video) pair, ρ per video, s and age per user (tensors on the run's device)."""

    theta: torch.Tensor
    rho: torch.Tensor
    s: torch.Tensor
    age: torch.Tensor
    # Pairs with no saved θ after a warm start (θ was padded with 0); None when all are known.
    fresh_pairs: torch.Tensor | None = None

    def clone(self) -> Parameters:
        return Parameters(
            theta=self.theta.clone(),
            rho=self.rho.clone(),
            s=self.s.clone(),
            age=self.age.clone(),
            fresh_pairs=None if self.fresh_pairs is None else self.fresh_pairs.clone(),
        )


@dataclass
class Progress:
    """Where a run stands: enough for the faithful solver to continue bit-for-bit."""

    epoch: int = 0  # epochs (faithful) or iterations (converged) completed
    lr_node: float = 0.0
    lr_gen: float = 0.0
    rng_state: torch.Tensor | None = None  # state of the equilibrium test's generator
    last_global_grad: torch.Tensor | None = None  # previous ∇ρ, for the grad_sp history entry
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False
    converged: bool = False
