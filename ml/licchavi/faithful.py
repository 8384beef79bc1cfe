"""The v1 training schedule: alternating plain SGD steps, learning-rate decay, equilibrium stop.

This replays the September 2022 Tournesol Licchavi loop with every user handled at once:
per epoch one local step on (θ, s) of fit + s-prior + w·coupling, then gen_freq steps on ρ of
w·coupling + w0·Σρ², with the same learning-rate schedule and the same random draws for the
equilibrium test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from ml.config import LicchaviConfig
from ml.licchavi import losses
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.problem import Problem

S_RESET_VALUE = 0.4  # the original resets a non-positive s_n to this value

EpochCallback = Callable[[dict[str, float]], bool]


def new_generator(seed: int) -> torch.Generator:
    """A private CPU generator: the same stream as torch.manual_seed(seed) + the global RNG,
    without touching global state shared with the rest of the process."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def initial_progress(config: LicchaviConfig) -> Progress:
    return Progress(
        lr_node=config.lr_node,
        lr_gen=config.lr_gen,
        rng_state=new_generator(config.seed).get_state(),
    )


def decay_learning_rates(progress: Progress, epoch: int, config: LicchaviConfig) -> None:
    """The v1 schedule's decay at the start of `epoch`: every rush epoch, then every second one
    until lr_node falls below min_lr_fine."""
    if epoch <= config.lr_rush_duration:
        decay = config.decay_rush
    elif epoch % 2 == 0 and progress.lr_node >= config.min_lr_fine / config.decay_fine:
        decay = config.decay_fine
    else:
        return
    progress.lr_gen *= decay
    progress.lr_node *= decay


def continued_progress(config: LicchaviConfig, warm_epochs: int) -> Progress:
    """Progress placed `warm_epochs` before the schedule's end, with the learning rates a cold
    run has there, so a warm start runs exactly the schedule's last epochs (whatever state it
    starts from, so that chained warm starts do not keep decaying)."""
    progress = initial_progress(config)
    progress.epoch = max(0, config.epochs - warm_epochs)
    for epoch in range(1, progress.epoch + 1):
        decay_learning_rates(progress, epoch, config)
    return progress


class FaithfulSolver:
    """Runs (or continues) the v1 schedule on one criterion."""

    def __init__(
        self,
        problem: Problem,
        config: LicchaviConfig,
        parameters: Parameters,
        progress: Progress,
    ) -> None:
        self.problem = problem
        self.config = config
        self.parameters = parameters
        self.progress = progress
        self.generator = torch.Generator(device="cpu")
        if progress.rng_state is not None:
            self.generator.set_state(progress.rng_state)
        else:
            self.generator.manual_seed(config.seed)
        dtype = parameters.theta.dtype
        # lr_s is divided by |D_n| and never decayed; SGD applies it in the working precision.
        self.lr_s_per_user = (
            config.lr_s / problem.comparisons_per_user.to(torch.float64).clamp_min(1)
        ).to(dtype)

    # ---- equilibrium test -------------------------------------------------------------
    def _random_signs(self) -> torch.Tensor:
        """±epsilon per video, drawn as the original did: randint(2) mapped to ±epsilon."""
        draw = torch.randint(2, size=(1, self.problem.n_videos), generator=self.generator)[0]
        dtype = self.parameters.rho.dtype
        signs = (draw.to(dtype) - 0.5) * 2
        return (signs * self.config.epsilon).to(self.parameters.rho.device)

    def _global_equilibrium(self) -> float:
        """Fraction of ρ coordinates whose derivative points back toward ρ at ρ ± δ."""
        rho, theta = self.parameters.rho, self.parameters.theta
        increment = self._random_signs()
        config = self.config

        def signed_derivative(delta: torch.Tensor) -> torch.Tensor:
            # Shift in place and back, as the original did (float rounding included).
            rho.add_(delta)
            deviation = losses.coupling_deviation(self.problem, theta, rho)
            gradient = losses.global_gradient(self.problem, deviation, rho, config.w, config.w0)
            rho.sub_(delta)
            return gradient * delta

        plus = signed_derivative(increment)
        minus = signed_derivative(-increment)
        at_equilibrium = torch.count_nonzero((plus > 0) & (minus > 0)).item()
        return float(np.float32(at_equilibrium) / np.float32(self.problem.n_videos))

    def _local_equilibrium(self) -> float:
        """Same test on θ (one shared ±δ per video), over coordinates with a non-zero derivative."""
        theta, rho, s = self.parameters.theta, self.parameters.rho, self.parameters.s
        increment = self._random_signs().index_select(0, self.problem.pair_video)
        w = self.config.w

        def signed_derivative(delta: torch.Tensor) -> torch.Tensor:
            theta.add_(delta)
            fit = losses.fit_terms(self.problem, theta, s)
            deviation = losses.coupling_deviation(self.problem, theta, rho)
            gradient = fit.grad_theta + w * torch.sign(deviation)
            theta.sub_(delta)
            return gradient * delta

        plus = signed_derivative(increment)
        minus = signed_derivative(-increment)
        at_equilibrium = torch.count_nonzero((plus > 0) & (minus > 0)).item()
        used = torch.count_nonzero((plus != 0) | (minus != 0)).item()
        if used == 0:
            return float("nan")
        return float(np.float32(at_equilibrium) / np.float32(used))

    # ---- schedule ---------------------------------------------------------------------
    def _schedule_says_stop(self, epoch: int) -> bool:
        """Update the learning rates for this epoch; True when the equilibrium test passes."""
        config = self.config
        decay_learning_rates(self.progress, epoch, config)
        if epoch <= config.lr_rush_duration or epoch % 2 != 0:
            return False
        if self._global_equilibrium() > config.precision:
            return self._local_equilibrium() > config.precision
        return False

    # ---- one epoch --------------------------------------------------------------------
    def _epoch(self) -> dict[str, float]:
        config, problem, parameters = self.config, self.problem, self.parameters
        theta, rho, s = parameters.theta, parameters.rho, parameters.s
        s.masked_fill_(s <= 0, S_RESET_VALUE)

        # Local step on (θ, s): fit + s-prior + w·coupling, ρ fixed.
        fit = losses.fit_terms(problem, theta, s)
        s_term = losses.s_prior(s)
        grad_theta = fit.grad_theta + config.w * torch.sign(
            losses.coupling_deviation(problem, theta, rho)
        )
        grad_s = fit.grad_s + losses.s_prior_gradient(s)
        # Multiplied, then subtracted: add_(alpha=) fuses the two on some CPU builds and not
        # others, and the last bit it changes decides later sign(θ − ρ) steps.
        theta.sub_(grad_theta * self.progress.lr_node)
        s.sub_(self.lr_s_per_user * grad_s)

        # Global steps on ρ: w·coupling + w0·Σρ², using the new θ.
        gen = reg = torch.zeros((), dtype=rho.dtype)
        gradient = torch.zeros_like(rho)
        for _ in range(config.gen_freq):
            deviation = losses.coupling_deviation(problem, theta, rho)
            gen = config.w * deviation.abs().sum()
            reg = losses.regularisation(rho, config.w0)
            gradient = losses.global_gradient(problem, deviation, rho, config.w, config.w0)
            rho.sub_(gradient * self.progress.lr_gen)

        previous = self.progress.last_global_grad
        grad_sp = 0.0 if previous is None else float((previous * gradient).sum())
        self.progress.last_global_grad = gradient
        parameters.age += 1
        return {
            "fit": float(fit.value),
            "s": float(s_term),
            "gen": float(gen),
            "reg": float(reg),
            "l2_norm": float(torch.linalg.vector_norm(rho)),
            "grad_sp": grad_sp,
            "grad_norm": float((gradient * gradient).sum()),
        }

    def run(self, on_epoch: EpochCallback | None = None) -> Progress:
        """Train until config.epochs or the equilibrium stop; on_epoch returning False aborts."""
        progress = self.progress
        started = time.perf_counter()
        elapsed_before = progress.history[-1]["elapsed"] if progress.history else 0.0
        for epoch in range(progress.epoch + 1, self.config.epochs + 1):
            if self._schedule_says_stop(epoch):
                progress.converged = True
                break
            row = self._epoch()
            row["elapsed"] = elapsed_before + time.perf_counter() - started
            progress.history.append(row)
            progress.epoch = epoch
            progress.rng_state = self.generator.get_state()
            if on_epoch is not None and on_epoch(row) is False:
                return progress
        progress.finished = True
        progress.rng_state = self.generator.get_state()
        return progress
