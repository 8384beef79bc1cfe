"""Terms of the Licchavi objective J and their gradients, vectorised over comparisons and pairs.

    J(θ, s, ρ) = Σ_comparisons f(s_n (θ_na − θ_nb), r)        fit
               + Σ_n (s_n²/2 − log s_n)                          s prior
               + w  Σ_(n, v) v_nv |θ_nv − ρ_v|                   coupling
               + w0 Σ_v ρ_v²                                     regularisation

with f(t, r) = log(2 sinh(t) / t) + r t, and v_nv the voting rights (1 without trust data,
ml/licchavi/voting_rights.py). The original evaluated f piecewise for float32
stability (|t| ≤ 0.01: t²/6 + log 2; |t| ≥ 10: |t| − log|t|). Here |t| ≤ 0.01 keeps that
polynomial, and every other |t| uses log(2 sinh m / m) = m + log(−expm1(−2m) / m), which never
overflows and equals |t| − log|t| to within e^(−20) beyond 10, so one formula covers both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ml.licchavi.kernels import Array, Kernels
from ml.licchavi.problem import Problem

LOG_TWO = math.log(2.0)
SMALL_T = 0.01
LARGE_T = 10.0
# In float32, coth(t) − 1/t and 1/t² − 1/sinh²(t) lose most digits to cancellation below this;
# a Taylor series is exact to float32 precision there. float64 keeps enough digits down to 0.01.
SERIES_T = 0.5


def _series_threshold(kernels: Kernels, t: Array) -> float:
    return SERIES_T if kernels.dtype_name(t) != "float64" else 0.0


def bt_loss_and_derivative(kernels: Kernels, t: Array, ratings: Array) -> tuple[Array, Array]:
    """f(t, r) and f'(t, r) = coth t − 1/t + r per comparison.

    Written with one exp and one log per comparison and few selects: this is the innermost
    loop of every epoch. −expm1 is rounded once from float64 (Kernels.one_minus_exp), so the
    result has the same bits on every CPU and on both kernel sets.
    """
    k = kernels
    magnitude = abs(t)
    small = magnitude <= SMALL_T
    clamped = k.clamp(magnitude, SMALL_T)  # keeps the unselected branch finite at t = 0
    one_minus_e = k.one_minus_exp(clamped * -2)  # 1 − e^(−2m), accurate for small m
    log_part = k.log(one_minus_e / clamped)
    log_part += clamped
    even_part = k.where(small, magnitude * magnitude / 6 + LOG_TWO, log_part)
    # coth m = (1 + e) / (1 − e) = (2 − (1 − e)) / (1 − e)
    odd_slope = 2 - one_minus_e
    odd_slope /= one_minus_e
    odd_slope -= 1 / clamped
    threshold = _series_threshold(k, t)
    if threshold > 0:
        squared = magnitude * magnitude
        series = magnitude * (
            1 / 3
            + squared
            * (-1 / 45 + squared * (2 / 945 + squared * (-1 / 4725 + squared * 2 / 93555)))
        )
        odd_slope = k.where(magnitude < threshold, series, odd_slope)
    else:
        odd_slope = k.where(small, magnitude / 3, odd_slope)
    even_part += ratings * t
    derivative = k.sign(t)
    derivative *= odd_slope
    derivative += ratings
    return even_part, derivative


def bt_second_derivative(kernels: Kernels, t: Array) -> Array:
    """f''(t) = 1/t² − 1/sinh²(t), consistent with the piecewise f (1/3 near 0, 1/t² far)."""
    k = kernels
    magnitude = abs(t)
    small = magnitude <= SMALL_T
    large = magnitude >= LARGE_T
    medium = k.clamp(magnitude, SMALL_T, LARGE_T)
    squared = medium * medium
    exact = 1 / squared - 1 / k.sinh(medium) ** 2
    threshold = _series_threshold(k, t)
    if threshold > 0:
        series = 1 / 3 + squared * (
            -1 / 15 + squared * (2 / 189 + squared * (-1 / 675 + squared * 2 / 10395))
        )
        exact = k.where(medium < threshold, series, exact)
    large_arg = k.clamp(magnitude, LARGE_T)
    return k.where(small, 1 / 3, k.where(large, 1 / (large_arg * large_arg), exact))


@dataclass(frozen=True)
class FitTerms:
    """The fit term at (θ, s) and its gradients."""

    value: float
    grad_theta: Array  # per pair
    grad_s: Array  # per user
    comparison_derivative: Array  # f'(t) per comparison, reused by callers


def fit_terms(problem: Problem, theta: Array, s: Array, with_s_gradient: bool = True) -> FitTerms:
    """Σ f(s_n (θ_a − θ_b), r) with ∂/∂θ (per pair) and ∂/∂s (per user; zeros without
    `with_s_gradient`, for callers that hold s fixed)."""
    k = problem.kernels
    difference = k.take(theta, problem.pair_a) - k.take(theta, problem.pair_b)
    scale = k.take(s, problem.comparison_user)
    loss, derivative = bt_loss_and_derivative(k, scale * difference, problem.ratings)
    return FitTerms(
        value=k.total(loss),
        grad_theta=problem.sum_per_pair(derivative * scale),
        grad_s=(
            problem.sum_per_user(derivative * difference)
            if with_s_gradient
            else k.zeros(problem.n_users, problem.dtype)
        ),
        comparison_derivative=derivative,
    )


def fit_value(problem: Problem, theta: Array, s: Array) -> float:
    """Σ f(s_n (θ_a − θ_b), r) only."""
    k = problem.kernels
    t = k.take(s, problem.comparison_user) * (
        k.take(theta, problem.pair_a) - k.take(theta, problem.pair_b)
    )
    return k.total(bt_loss_and_derivative(k, t, problem.ratings)[0])


def s_prior(kernels: Kernels, s: Array) -> float:
    """Σ (s²/2 − log s): keeps every scale near 1."""
    return kernels.total(0.5 * s * s - kernels.log(s))


def s_prior_gradient(s: Array) -> Array:
    return s - 1 / s


def coupling_deviation(problem: Problem, theta: Array, rho: Array) -> Array:
    """θ_nv − ρ_v for every (user, video) pair."""
    return theta - problem.kernels.take(rho, problem.pair_video)


def coupling_value(problem: Problem, deviation: Array, w: float) -> float:
    """w·Σ v_nv·|θ_nv − ρ_v| (v1's w·Σ|θ − ρ| without voting rights)."""
    k = problem.kernels
    if problem.voting_rights is None:
        return w * k.total(abs(deviation))
    return k.total(problem.coupling_weight(w) * abs(deviation))


def regularisation(kernels: Kernels, rho: Array, w0: float) -> float:
    return w0 * kernels.total(rho * rho)


def global_gradient(problem: Problem, deviation: Array, rho: Array, w: float, w0: float) -> Array:
    """∂/∂ρ of w·Σ v_nv·|θ − ρ| + w0·Σρ², taking sign(0) = 0 like torch's |x|."""
    signs = problem.kernels.sign(deviation)
    if problem.voting_rights is None:  # v1's expression, kept bit for bit
        return problem.sum_per_video(signs) * (-w) + 2 * w0 * rho
    return problem.sum_per_video(signs * problem.coupling_weight(w)) * -1 + 2 * w0 * rho


def objective(problem: Problem, theta: Array, rho: Array, s: Array, w: float, w0: float) -> float:
    """J(θ, s, ρ)."""
    k = problem.kernels
    coupling = coupling_value(problem, coupling_deviation(problem, theta, rho), w)
    return fit_value(problem, theta, s) + s_prior(k, s) + coupling + regularisation(k, rho, w0)


def objective_gradients(
    problem: Problem, theta: Array, rho: Array, s: Array, w: float, w0: float
) -> tuple[Array, Array, Array]:
    """(∂J/∂θ, ∂J/∂ρ, ∂J/∂s) with sign(0) = 0 for the |·| terms."""
    fit = fit_terms(problem, theta, s)
    deviation = coupling_deviation(problem, theta, rho)
    grad_theta = fit.grad_theta + problem.coupling_weight(w) * problem.kernels.sign(deviation)
    grad_rho = global_gradient(problem, deviation, rho, w, w0)
    grad_s = fit.grad_s + s_prior_gradient(s)
    return grad_theta, grad_rho, grad_s
