"""J in the (x = θ − ρ, ρ, s) coordinates: its smooth part, minimal-norm subgradient, stationarity.

Writing θ_nv = x_nv + ρ_v turns the coupling into w·‖x‖₁, an L1 term on separate coordinates,
next to a smooth part F(x, ρ, s) = fit + s-prior + w0·Σρ². The minimal-norm subgradient of
F + w‖x‖₁ is zero exactly at the stationary points of J: the converged solver descends along
it, and every run reports its largest coordinate as `stationarity`. Kernel-neutral, float64.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml.licchavi import losses
from ml.licchavi.kernels import Array
from ml.licchavi.parameters import Parameters
from ml.licchavi.problem import Problem


@dataclass
class SmoothPart:
    value: float
    grad: Array  # over the packed vector [x, ρ, s]
    fit: float
    s_prior: float
    reg: float


class PackedLayout:
    """Slices of the packed vector z = [x (pairs), ρ (videos), s (users)]."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.n_pairs = problem.n_pairs
        self.n_videos = problem.n_videos
        self.n_users = problem.n_users
        self.size = self.n_pairs + self.n_videos + self.n_users

    def split(self, z: Array) -> tuple[Array, Array, Array]:
        x = z[: self.n_pairs]
        rho = z[self.n_pairs : self.n_pairs + self.n_videos]
        s = z[self.n_pairs + self.n_videos :]
        return x, rho, s

    def pack(self, parameters: Parameters) -> Array:
        k = self.problem.kernels
        theta = k.astype(parameters.theta, "float64")
        rho = k.astype(parameters.rho, "float64")
        x = theta - k.take(rho, self.problem.pair_video)
        if parameters.fresh_pairs is not None:
            # A score nobody fitted yet starts tied to the global one (x = 0), not at 0: the
            # closest guess, so a warm start only has to fit the new comparisons.
            x = k.where(k.array(parameters.fresh_pairs, "bool"), 0.0, x)
        return k.concatenate([x, rho, k.astype(parameters.s, "float64")])

    def theta(self, z: Array) -> Array:
        x, rho, _ = self.split(z)
        return x + self.problem.kernels.take(rho, self.problem.pair_video)


def smooth_part(layout: PackedLayout, z: Array, w0: float, optimise_s: bool = True) -> SmoothPart:
    """F = fit + s-prior + w0·Σρ² and its gradient in the (x, ρ, s) coordinates.

    With optimise_s False the s block of the gradient is zero, so s stays where it started.
    """
    problem = layout.problem
    k = problem.kernels
    x, rho, s = layout.split(z)
    if bool((s <= 0).any()):
        infinite = float("inf")
        return SmoothPart(infinite, k.zeros(layout.size, "float64"), infinite, infinite, 0.0)
    theta = x + k.take(rho, problem.pair_video)
    fit = losses.fit_terms(problem, theta, s, with_s_gradient=optimise_s)
    s_prior = losses.s_prior(k, s)
    reg = losses.regularisation(k, rho, w0)
    grad = k.concatenate(
        [
            fit.grad_theta,
            problem.sum_per_video(fit.grad_theta) + 2 * w0 * rho,
            fit.grad_s + losses.s_prior_gradient(s) if optimise_s else fit.grad_s,
        ]
    )
    return SmoothPart(fit.value + s_prior + reg, grad, fit.value, s_prior, reg)


def coupling_value(layout: PackedLayout, z: Array, w: float) -> float:
    """The coupling w·Σ v_nv·|θ − ρ| = w·Σ v_nv·|x_nv| at z (its only value in these coordinates;
    v_nv = 1 without voting rights)."""
    problem = layout.problem
    x = abs(z[: layout.n_pairs])
    if problem.voting_rights is None:
        return w * problem.kernels.total(x)
    return problem.kernels.total(problem.coupling_weight(w) * x)


def pseudo_gradient(layout: PackedLayout, z: Array, grad: Array, w: float) -> Array:
    """Minimal-norm subgradient of F + w‖x‖₁ (zero exactly at stationary points of J).

    The coupling's only gradient in these coordinates (w·sign(x), or the interval [−w, w] at
    x = 0); it has no curvature, so the Newton system does not see w. With voting rights the L1
    term is Σ w·v_nv·|x_nv|: the same, coordinate by coordinate.
    """
    k = layout.problem.kernels
    n = layout.n_pairs
    x, g = z[:n], grad[:n]
    w = layout.problem.coupling_weight(w)  # w·v_nv per pair with voting rights
    at_zero = k.sign(g) * k.clamp(abs(g) - w, 0.0)
    pg_x = k.where(x != 0, g + w * k.sign(x), at_zero)
    return k.concatenate([pg_x, grad[n:]])


def stationarity(
    problem: Problem, parameters: Parameters, w: float, w0: float, optimise_s: bool = True
) -> float:
    """max |minimal-norm subgradient of J| at the given parameters (float64)."""
    layout = PackedLayout(problem)
    z = layout.pack(parameters)
    smooth = smooth_part(layout, z, w0, optimise_s)
    gradient = pseudo_gradient(layout, z, smooth.grad, w)
    return float(abs(gradient).max()) if layout.size else 0.0
