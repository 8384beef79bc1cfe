"""Personal scores: each user's local scores re-fitted to their own comparisons, global ones fixed.

After the solver the global scores ρ are fixed; users are then independent, and each user's local
scores are re-fitted (`personalise=true`, the converged solver's default):

    minimise over θ_n, a_n:   Σ_{c in D_n} f(s_n (θ_na − θ_nb), r_c)
                            + (w_p / 2) Σ_{v in V_n} (θ_nv − a_n ρ_v)²  +  (λ / 2)(a_n − 1)²

a Gaussian tie (w_p = `personal_coupling`) to the global scores through a personal slope a_n. A
user who agrees with the crowd gets a_n ≈ 1 and scores close to ρ; one whose taste is inverted
gets a_n ≈ −1, and the tie then pulls their scores towards −ρ, what the global scores say about
*their* taste, instead of onto the crowd's ranking (the L1 coupling of J ties 95 % of all local
scores exactly to ρ, whatever the user said). λ keeps a user with few videos near a_n = 1. The
global scores are not touched. Measured alternatives (a coupling chosen per user by
cross-validation on held-out comparisons, a hierarchical per-user coupling, a second shared
taste factor) are in docs/solvers.md, "Personal scores".

All users are solved at once (the problem is block-diagonal and strictly convex): Newton steps on
(θ, a), each solved by diagonally preconditioned conjugate gradients whose Hessian-vector
products are the fit term's gathers and scatters. NumPy, float64, deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.licchavi.kernels import NumpyKernels
from ml.licchavi.losses import bt_loss_and_derivative, bt_second_derivative
from ml.licchavi.problem import Problem

# Prior weight on the personal slope a_n around 1: a user with few videos follows the crowd.
SLOPE_PRIOR = 1.0
NEWTON_STEPS = 30
# Largest gradient coordinate at which the re-fit stops. Scores then lie within about 1e-3 of the
# exact optimum, far inside their uncertainty (≥ 0.1); 1e-5 gave the same rankings to four digits
# for 1.5x the time (200k comparisons: 0.81 s of CPU against 0.54 s).
TOLERANCE = 1e-3
CG_STEPS = 200
ARMIJO = 1e-4
MAX_BACKTRACKS = 40

_NUMPY = NumpyKernels()


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not BLAS: a multi-threaded BLAS dot spins on a busy machine (10x slower measured).
    return float(np.einsum("i,i->", a, b))


@dataclass(frozen=True)
class UserComparisons:
    """One criterion's comparisons as NumPy index arrays (pairs sorted by user, then video)."""

    n_users: int
    comparison_user: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray
    ratings: np.ndarray
    pair_user: np.ndarray
    pair_video: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(self.pair_user.shape[0])

    @classmethod
    def of(cls, problem: Problem) -> UserComparisons:
        """The problem's index arrays, on NumPy whatever kernels it runs on."""
        k = problem.kernels
        return cls(
            n_users=problem.n_users,
            comparison_user=k.to_numpy(problem.comparison_user),
            pair_a=k.to_numpy(problem.pair_a),
            pair_b=k.to_numpy(problem.pair_b),
            ratings=k.to_numpy(problem.ratings).astype(np.float64),
            pair_user=problem.pair_user_np,
            pair_video=problem.pair_video_np,
        )


@dataclass(frozen=True)
class Personalisation:
    """Re-fitted local scores per pair, their spread, and each user's slope."""

    theta: np.ndarray  # per pair
    uncertainty: np.ndarray  # per pair: (s_n² Σ f'' + w_p)^(−1/2), the re-fit's curvature
    slope: np.ndarray  # per user: a_n
    iterations: int  # Newton steps
    converged: bool  # largest gradient coordinate ≤ TOLERANCE


class _UserFit:
    """The per-user objective for a coupling, with ρ and s fixed."""

    def __init__(
        self, data: UserComparisons, rho: np.ndarray, s: np.ndarray, coupling: float
    ) -> None:
        self.data = data
        self.rho_pair = rho[data.pair_video]
        self.scale = s[data.comparison_user]
        self.coupling = coupling
        self.slope_curvature = (
            np.bincount(data.pair_user, coupling * self.rho_pair**2, data.n_users) + SLOPE_PRIOR
        )

    def _t(self, theta: np.ndarray) -> np.ndarray:
        return self.scale * (theta[self.data.pair_a] - theta[self.data.pair_b])

    def _per_pair(self, values: np.ndarray) -> np.ndarray:
        n = self.data.n_pairs
        return np.bincount(self.data.pair_a, values, n) - np.bincount(self.data.pair_b, values, n)

    def _per_user(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.data.pair_user, values, self.data.n_users)

    def value_and_gradient(
        self, theta: np.ndarray, slope: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        loss, derivative = bt_loss_and_derivative(_NUMPY, self._t(theta), self.data.ratings)
        residual = theta - slope[self.data.pair_user] * self.rho_pair
        offset = slope - 1
        value = (
            float(loss.sum())
            + 0.5 * self.coupling * _dot(residual, residual)
            + 0.5 * SLOPE_PRIOR * _dot(offset, offset)
        )
        grad_theta = self._per_pair(derivative * self.scale) + self.coupling * residual
        grad_slope = SLOPE_PRIOR * offset - self._per_user(self.coupling * residual * self.rho_pair)
        return value, grad_theta, grad_slope

    def _pair_sum(self, values: np.ndarray) -> np.ndarray:
        n = self.data.n_pairs
        return np.bincount(self.data.pair_a, values, n) + np.bincount(self.data.pair_b, values, n)

    def pair_curvature(self, theta: np.ndarray) -> np.ndarray:
        """Σ s² f''(t) over each pair's comparisons: the fit's curvature along θ_nv."""
        return self._pair_sum(bt_second_derivative(_NUMPY, self._t(theta)) * self.scale**2)

    def newton_direction(
        self, theta: np.ndarray, grad_theta: np.ndarray, grad_slope: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximately solve the Newton system by diagonally preconditioned CG."""
        data, coupling = self.data, self.coupling
        curvature = bt_second_derivative(_NUMPY, self._t(theta)) * self.scale**2
        diagonal_theta = self._pair_sum(curvature) + coupling
        diagonal_slope = self.slope_curvature

        def times(v_theta: np.ndarray, v_slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            tied = coupling * (v_theta - v_slope[data.pair_user] * self.rho_pair)
            out_theta = self._per_pair(curvature * (v_theta[data.pair_a] - v_theta[data.pair_b]))
            out_theta += tied
            out_slope = SLOPE_PRIOR * v_slope - self._per_user(tied * self.rho_pair)
            return out_theta, out_slope

        r_theta, r_slope = -grad_theta, -grad_slope
        d_theta, d_slope = np.zeros_like(r_theta), np.zeros_like(r_slope)
        z_theta, z_slope = r_theta / diagonal_theta, r_slope / diagonal_slope
        p_theta, p_slope = z_theta.copy(), z_slope.copy()
        rz = _dot(r_theta, z_theta) + _dot(r_slope, z_slope)
        norm = np.sqrt(_dot(r_theta, r_theta) + _dot(r_slope, r_slope))
        # Inexact Newton: a loose solve far from the optimum, a tight one near it.
        target = min(0.1, np.sqrt(norm)) * norm
        for _ in range(CG_STEPS):
            q_theta, q_slope = times(p_theta, p_slope)
            curved = _dot(p_theta, q_theta) + _dot(p_slope, q_slope)
            if curved <= 0:
                break
            step = rz / curved
            d_theta += step * p_theta
            d_slope += step * p_slope
            r_theta -= step * q_theta
            r_slope -= step * q_slope
            if np.sqrt(_dot(r_theta, r_theta) + _dot(r_slope, r_slope)) <= target:
                break
            z_theta, z_slope = r_theta / diagonal_theta, r_slope / diagonal_slope
            next_rz = _dot(r_theta, z_theta) + _dot(r_slope, z_slope)
            p_theta = z_theta + (next_rz / rz) * p_theta
            p_slope = z_slope + (next_rz / rz) * p_slope
            rz = next_rz
        return d_theta, d_slope

    def minimise(self) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """Newton with backtracking from θ = ρ, a = 1."""
        theta, slope = self.rho_pair.copy(), np.ones(self.data.n_users)
        value, grad_theta, grad_slope = self.value_and_gradient(theta, slope)
        steps = 0
        for steps in range(NEWTON_STEPS + 1):
            largest = max(np.abs(grad_theta).max(initial=0.0), np.abs(grad_slope).max(initial=0.0))
            if largest <= TOLERANCE or steps == NEWTON_STEPS:
                return theta, slope, steps, bool(largest <= TOLERANCE)
            d_theta, d_slope = self.newton_direction(theta, grad_theta, grad_slope)
            descent = _dot(grad_theta, d_theta) + _dot(grad_slope, d_slope)
            step = 1.0
            for _ in range(MAX_BACKTRACKS):
                new = self.value_and_gradient(theta + step * d_theta, slope + step * d_slope)
                if new[0] <= value + ARMIJO * step * descent:
                    break
                step *= 0.5
            else:  # no progress at float64 precision
                return theta, slope, steps, False
            theta, slope = theta + step * d_theta, slope + step * d_slope
            value, grad_theta, grad_slope = new
        return theta, slope, steps, False


def personalise(
    data: UserComparisons, rho: np.ndarray, s: np.ndarray, coupling: float
) -> Personalisation:
    """Re-fit every user's local scores around the fixed global scores ρ (module docstring)."""
    fit = _UserFit(
        data, np.asarray(rho, dtype=np.float64), np.asarray(s, dtype=np.float64), coupling
    )
    theta, slope, iterations, converged = fit.minimise()
    with np.errstate(divide="ignore"):
        spread = (fit.pair_curvature(theta) + coupling) ** -0.5
    return Personalisation(
        theta=theta, uncertainty=spread, slope=slope, iterations=iterations, converged=converged
    )
