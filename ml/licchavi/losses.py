"""Terms of the Licchavi objective J and their gradients, vectorised over comparisons and pairs.

    J(θ, s, ρ) = Σ_comparisons f(s_n (θ_na − θ_nb), r)        fit
               + Σ_n (s_n²/2 − log s_n)                          s prior
               + w  Σ_(n, v) |θ_nv − ρ_v|                        coupling
               + w0 Σ_v ρ_v²                                     regularisation

with f(t, r) = log(2 sinh(t) / t) + r t. The original evaluated f piecewise for float32
stability (|t| ≤ 0.01: t²/6 + log 2; |t| ≥ 10: |t| − log|t|). Here |t| ≤ 0.01 keeps that
polynomial, and every other |t| uses log(2 sinh m / m) = m + log(−expm1(−2m) / m), which never
overflows and equals |t| − log|t| to within e^(−20) beyond 10, so one formula covers both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ml.licchavi.problem import Problem

LOG_TWO = math.log(2.0)
SMALL_T = 0.01
LARGE_T = 10.0
# In float32, coth(t) − 1/t and 1/t² − 1/sinh²(t) lose most digits to cancellation below this;
# a Taylor series is exact to float32 precision there. float64 keeps enough digits down to 0.01.
SERIES_T = 0.5


def _series_threshold(t: torch.Tensor) -> float:
    return SERIES_T if t.dtype != torch.float64 else 0.0


def _one_minus_exp(x: torch.Tensor) -> torch.Tensor:
    """−expm1(x), in float64 and rounded once for float32 input: the SIMD and the scalar
    float32 expm1 kernels differ in the last bit, and the faithful solver's sign(θ − ρ) steps
    turn such bits into whole learning-rate steps (up to 0.2 in a global score at 100k
    comparisons between two CPU builds). Rounded once, the result is the same on both."""
    if x.dtype == torch.float32:
        return torch.expm1(x.to(torch.float64)).neg_().to(torch.float32)
    return torch.expm1(x).neg_()


def bt_loss_and_derivative(t: torch.Tensor, ratings: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """f(t, r) and f'(t, r) = coth t − 1/t + r per comparison.

    Written with one exp and one log per comparison and few selects: this is the innermost
    loop of every epoch.
    """
    magnitude = t.abs()
    small = magnitude <= SMALL_T
    clamped = magnitude.clamp_min(SMALL_T)  # keeps the unselected branch finite at t = 0
    one_minus_e = _one_minus_exp(clamped * -2)  # 1 − e^(−2m), accurate for small m
    even_part = torch.where(
        small,
        magnitude * magnitude / 6 + LOG_TWO,
        torch.log(one_minus_e / clamped).add_(clamped),
    )
    # coth m = (1 + e) / (1 − e) = (2 − (1 − e)) / (1 − e)
    odd_slope = (2 - one_minus_e).div_(one_minus_e).sub_(clamped.reciprocal())
    threshold = _series_threshold(t)
    if threshold > 0:
        squared = magnitude * magnitude
        series = magnitude * (
            1 / 3
            + squared
            * (-1 / 45 + squared * (2 / 945 + squared * (-1 / 4725 + squared * 2 / 93555)))
        )
        odd_slope = torch.where(magnitude < threshold, series, odd_slope)
    else:
        odd_slope = torch.where(small, magnitude / 3, odd_slope)
    loss = even_part.add_(ratings * t)
    derivative = torch.sign(t).mul_(odd_slope).add_(ratings)
    return loss, derivative


def bt_second_derivative(t: torch.Tensor) -> torch.Tensor:
    """f''(t) = 1/t² − 1/sinh²(t), consistent with the piecewise f (1/3 near 0, 1/t² far)."""
    magnitude = t.abs()
    small = magnitude <= SMALL_T
    large = magnitude >= LARGE_T
    medium = magnitude.clamp(SMALL_T, LARGE_T)
    squared = medium * medium
    exact = 1 / squared - 1 / torch.sinh(medium) ** 2
    threshold = _series_threshold(t)
    if threshold > 0:
        series = 1 / 3 + squared * (
            -1 / 15 + squared * (2 / 189 + squared * (-1 / 675 + squared * 2 / 10395))
        )
        exact = torch.where(medium < threshold, series, exact)
    large_arg = magnitude.clamp_min(LARGE_T)
    return torch.where(
        small, torch.full_like(t, 1 / 3), torch.where(large, 1 / (large_arg * large_arg), exact)
    )


@dataclass(frozen=True)
class FitTerms:
    """The fit term at (θ, s) and its gradients."""

    value: torch.Tensor  # scalar
    grad_theta: torch.Tensor  # per pair
    grad_s: torch.Tensor  # per user
    comparison_derivative: torch.Tensor  # f'(t) per comparison, reused by callers


def fit_terms(problem: Problem, theta: torch.Tensor, s: torch.Tensor) -> FitTerms:
    """Σ f(s_n (θ_a − θ_b), r) with ∂/∂θ (per pair) and ∂/∂s (per user)."""
    difference = theta.index_select(0, problem.pair_a) - theta.index_select(0, problem.pair_b)
    scale = s.index_select(0, problem.comparison_user)
    loss, derivative = bt_loss_and_derivative(scale * difference, problem.ratings)
    return FitTerms(
        value=loss.sum(),
        grad_theta=problem.sum_per_pair(derivative * scale),
        grad_s=problem.sum_per_user(derivative * difference),
        comparison_derivative=derivative,
    )


def fit_value(problem: Problem, theta: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Σ f(s_n (θ_a − θ_b), r) only."""
    t = s.index_select(0, problem.comparison_user) * (
        theta.index_select(0, problem.pair_a) - theta.index_select(0, problem.pair_b)
    )
    return bt_loss_and_derivative(t, problem.ratings)[0].sum()


def s_prior(s: torch.Tensor) -> torch.Tensor:
    """Σ (s²/2 − log s): keeps every scale near 1."""
    return (0.5 * s * s - torch.log(s)).sum()


def s_prior_gradient(s: torch.Tensor) -> torch.Tensor:
    return s - 1 / s


def coupling_deviation(problem: Problem, theta: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """θ_nv − ρ_v for every (user, video) pair."""
    return theta - rho.index_select(0, problem.pair_video)


def regularisation(rho: torch.Tensor, w0: float) -> torch.Tensor:
    return w0 * (rho * rho).sum()


def global_gradient(
    problem: Problem, deviation: torch.Tensor, rho: torch.Tensor, w: float, w0: float
) -> torch.Tensor:
    """∂/∂ρ of w·Σ|θ − ρ| + w0·Σρ², taking sign(0) = 0 like torch's |x|."""
    return problem.sum_per_video(torch.sign(deviation)) * (-w) + 2 * w0 * rho


def objective(
    problem: Problem,
    theta: torch.Tensor,
    rho: torch.Tensor,
    s: torch.Tensor,
    w: float,
    w0: float,
) -> torch.Tensor:
    """J(θ, s, ρ) as a scalar tensor."""
    coupling = w * coupling_deviation(problem, theta, rho).abs().sum()
    return fit_value(problem, theta, s) + s_prior(s) + coupling + regularisation(rho, w0)


def objective_gradients(
    problem: Problem,
    theta: torch.Tensor,
    rho: torch.Tensor,
    s: torch.Tensor,
    w: float,
    w0: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂J/∂θ, ∂J/∂ρ, ∂J/∂s) with sign(0) = 0 for the |·| terms."""
    fit = fit_terms(problem, theta, s)
    deviation = coupling_deviation(problem, theta, rho)
    grad_theta = fit.grad_theta + w * torch.sign(deviation)
    grad_rho = global_gradient(problem, deviation, rho, w, w0)
    grad_s = fit.grad_s + s_prior_gradient(s)
    return grad_theta, grad_rho, grad_s
