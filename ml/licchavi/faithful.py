"""The v1 training schedule: alternating plain SGD steps, learning-rate decay, equilibrium stop.

This replays the September 2022 Tournesol Licchavi loop with every user handled at once:
per epoch one local step on (θ, s) of fit + s-prior + w·coupling (weighted by the voting rights
when some users are trusted), then gen_freq steps on ρ of
w·coupling + w0·Σρ², with the same learning-rate schedule and the same random draws for the
equilibrium test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ml.config import LicchaviConfig
from ml.licchavi import losses
from ml.licchavi.kernels import Array
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.problem import Problem
from ml.licchavi.random_draws import RandomBits, initial_state

S_RESET_VALUE = 0.4  # the original resets a non-positive s_n to this value

EpochCallback = Callable[[dict[str, float]], bool]


def initial_progress(config: LicchaviConfig) -> Progress:
    return Progress(
        lr_node=config.lr_node, lr_gen=config.lr_gen, rng_state=initial_state(config.seed)
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
    """Runs (or continues) the v1 schedule on one criterion, on the problem's kernels."""

    def __init__(
        self,
        problem: Problem,
        config: LicchaviConfig,
        parameters: Parameters,
        progress: Progress,
    ) -> None:
        self.problem = problem
        self.kernels = problem.kernels
        self.config = config
        self.parameters = parameters
        self.progress = progress
        saved = progress.rng_state
        self.random_bits = RandomBits(saved if saved is not None else initial_state(config.seed))
        # lr_s is divided by |D_n| and never decayed; SGD applies it in the working precision.
        per_user = config.lr_s / np.maximum(problem.comparisons_per_user.astype(np.float64), 1)
        self.lr_s_per_user = self.kernels.array(per_user, problem.dtype)

    # ---- equilibrium test -------------------------------------------------------------
    def _random_signs(self) -> Array:
        """±epsilon per video, drawn as the original did: randint(2) mapped to ±epsilon."""
        draw = self.random_bits.draw(self.problem.n_videos)
        # (draw − 0.5) · 2 · epsilon in the working precision: exactly ±epsilon.
        epsilon = np.array(self.config.epsilon, dtype=self.problem.dtype)
        return self.kernels.array(np.where(draw == 1, epsilon, -epsilon), self.problem.dtype)

    def _global_equilibrium(self) -> float:
        """Fraction of ρ coordinates whose derivative points back toward ρ at ρ ± δ."""
        increment = self._random_signs()
        plus = self._global_signed_derivative(increment)
        minus = self._global_signed_derivative(-increment)
        at_equilibrium = self.kernels.count_nonzero((plus > 0) & (minus > 0))
        return float(np.float32(at_equilibrium) / np.float32(self.problem.n_videos))

    def _global_signed_derivative(self, delta: Array) -> Array:
        """δ · ∂/∂ρ at ρ + δ, shifting ρ in place and back as the original did (float rounding
        included)."""
        rho, config = self.parameters.rho, self.config
        rho += delta
        deviation = losses.coupling_deviation(self.problem, self.parameters.theta, rho)
        gradient = losses.global_gradient(self.problem, deviation, rho, config.w, config.w0)
        rho -= delta
        return gradient * delta

    def _local_equilibrium(self) -> float:
        """Same test on θ (one shared ±δ per video), over coordinates with a non-zero derivative."""
        increment = self.kernels.take(self._random_signs(), self.problem.pair_video)
        plus = self._local_signed_derivative(increment)
        minus = self._local_signed_derivative(-increment)
        at_equilibrium = self.kernels.count_nonzero((plus > 0) & (minus > 0))
        used = self.kernels.count_nonzero((plus != 0) | (minus != 0))
        if used == 0:
            return float("nan")
        return float(np.float32(at_equilibrium) / np.float32(used))

    def _local_signed_derivative(self, delta: Array) -> Array:
        """δ · ∂/∂θ of fit + w·coupling at θ + δ, shifting θ in place and back."""
        theta, parameters = self.parameters.theta, self.parameters
        theta += delta
        fit = losses.fit_terms(self.problem, theta, parameters.s)
        deviation = losses.coupling_deviation(self.problem, theta, parameters.rho)
        weight = self.problem.coupling_weight(self.config.w)
        gradient = fit.grad_theta + weight * self.kernels.sign(deviation)
        theta -= delta
        return gradient * delta

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
        config, problem, parameters, k = self.config, self.problem, self.parameters, self.kernels
        theta, rho, s = parameters.theta, parameters.rho, parameters.s
        s[s <= 0] = S_RESET_VALUE

        # Local step on (θ, s): fit + s-prior + w·coupling, ρ fixed.
        fit = losses.fit_terms(problem, theta, s)
        s_term = losses.s_prior(k, s)
        grad_theta = fit.grad_theta + problem.coupling_weight(config.w) * k.sign(
            losses.coupling_deviation(problem, theta, rho)
        )
        grad_s = fit.grad_s + losses.s_prior_gradient(s)
        # Multiplied, then subtracted: a fused multiply-add (torch's add_(alpha=) on some CPU
        # builds) changes last bits that decide later sign(θ − ρ) steps.
        theta -= grad_theta * self.progress.lr_node
        s -= self.lr_s_per_user * grad_s

        # Global steps on ρ: w·coupling + w0·Σρ², using the new θ.
        gen = reg = 0.0
        gradient = k.zeros(problem.n_videos, problem.dtype)
        for _ in range(config.gen_freq):
            deviation = losses.coupling_deviation(problem, theta, rho)
            gen = losses.coupling_value(problem, deviation, config.w)
            reg = losses.regularisation(k, rho, config.w0)
            gradient = losses.global_gradient(problem, deviation, rho, config.w, config.w0)
            rho -= gradient * self.progress.lr_gen

        previous = self.progress.last_global_grad
        grad_sp = 0.0 if previous is None else k.total(previous * gradient)
        self.progress.last_global_grad = gradient
        parameters.age += 1
        return {
            "fit": fit.value,
            "s": s_term,
            "gen": gen,
            "reg": reg,
            "l2_norm": k.norm(rho),
            "grad_sp": grad_sp,
            "grad_norm": k.total(gradient * gradient),
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
            progress.rng_state = self.random_bits.state()
            if on_epoch is not None and on_epoch(row) is False:
                return progress
        progress.finished = True
        progress.rng_state = self.random_bits.state()
        return progress
