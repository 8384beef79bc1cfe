"""Deterministic minimisation of J to a stated stationarity tolerance (orthant-wise Newton).

Writing θ_nv = x_nv + ρ_v turns the coupling into w·‖x‖₁, an L1 term on separate coordinates,
next to a smooth part F(x, ρ, s) = fit + s-prior + w0·Σρ². Orthant-wise methods (Andrew & Gao,
2007) handle exactly that shape: inside the orthant fixed by the signs of x the L1 term is
linear, coordinates that reach 0 stay exactly 0 (a local score tied to the global one, the
"median" solutions of the coupling) and the stopping test is the minimal-norm subgradient of J,
reported as `stationarity` (its largest coordinate).

With s held fixed (the default) J is convex in (θ, ρ): each step solves the Newton system on
the free coordinates by preconditioned conjugate gradients (Hessian-vector products are the
same gathers and scatters as the gradient), so convergence is fast near the optimum and a warm
start needs few steps. With s free the problem is not convex and an L-BFGS direction is used.
All arithmetic is float64 and written against the kernel protocol (`ml/licchavi/kernels.py`):
NumPy on the CPU, torch on CUDA (`ml/licchavi/devices.py` chooses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ml.config import LicchaviConfig
from ml.licchavi import losses
from ml.licchavi.kernels import Array
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.problem import Problem
from ml.licchavi.subgradient import PackedLayout, coupling_value, pseudo_gradient, smooth_part

HISTORY_SIZE = 12
MAX_CG_STEPS = 200
ARMIJO = 1e-4
MAX_BACKTRACKS = 50

IterationCallback = Callable[[dict[str, float]], bool]


CURVATURE_FLOOR = 1e-3
# Levenberg–Marquardt damping of the Newton system, times min(1, stationarity), relative to the
# diagonal of ∇²F (Marquardt's scaling): the system is ∇²F + λ·diag(∇²F). The smooth part is
# flat along shifting all of one user's x by the same amount (the fit only sees differences):
# while all of a user's x are free the system is singular, the L1 term's slope w·Σsign(x) lies
# along that flat direction, and undamped CG ran off to steps of 1e32 that no backtracking
# recovers (the solver stopped after 1 to 5 iterations, far from stationary). The damping bounds
# the step there; shrinking with stationarity keeps Newton's fast convergence near the optimum.
# It must be relative to the curvature: with an extreme rating (|r| = 1) the fit f(t, r)
# decreases like −log|t| without end, and only the coupling w·v_nv·|x| stops it, so a pair with
# a tiny voting right settles far out: a fake account's target (100 comparisons, v_nv = 0.0018)
# near |t| = 100/(w·v_nv) = 55,000, where its diagonal Σf'' ≈ 100/t² is 3e-8. A damping of 1e-2
# added to every coordinate there turned Newton's doubling of t per step into steps of a few
# units, and 3,000 iterations were not enough (20 % of the users trusted, 10 or more fake
# accounts: docs/solvers.md, "Convergence with few trusted users").
DAMPING = 1e-2
# Only keeps 1/diagonal finite; ρ's diagonal is at least 2·w0, and every x is in a comparison.
DIAGONAL_FLOOR = 1e-12


@dataclass(frozen=True)
class FitCurvature:
    """The fit's second derivatives at one iterate, computed once per iteration for both the
    preconditioner and the Hessian-vector products."""

    weight: Array  # f''(s_n (θ_a − θ_b)) · s_n² per comparison: the weight on (θ_a − θ_b)
    per_user: Array | None  # ∂²fit/∂s_n², only when s moves


def fit_curvature(layout: PackedLayout, z: Array, with_s: bool) -> FitCurvature:
    problem = layout.problem
    k = problem.kernels
    x, rho, s = layout.split(z)
    theta = x + k.take(rho, problem.pair_video)
    scale = k.take(s, problem.comparison_user)
    difference = k.take(theta, problem.pair_a) - k.take(theta, problem.pair_b)
    del theta
    second = losses.bt_second_derivative(k, scale * difference)
    per_user = None
    if with_s:
        per_user = problem.sum_per_user(second * difference * difference)
    return FitCurvature(second * scale * scale, per_user)


def curvature_diagonal(layout: PackedLayout, z: Array, curvature: FitCurvature, w0: float) -> Array:
    """The diagonal of ∇²F over [x, ρ, s] (1 on s when s is held fixed), unfloored."""
    problem = layout.problem
    k = problem.kernels
    per_pair = problem.sum_over_both_sides(curvature.weight)
    per_video = problem.sum_per_video(per_pair) + 2 * w0
    if curvature.per_user is not None:
        _, _, s = layout.split(z)
        per_user = curvature.per_user + 1 + 1 / (s * s)
    else:
        per_user = k.zeros(layout.n_users, "float64") + 1
    return k.concatenate([per_pair, per_video, per_user])


def inverse_curvature(layout: PackedLayout, z: Array, curvature: FitCurvature, w0: float) -> Array:
    """1 / diagonal of ∇²F: the conjugate gradients' preconditioner, L-BFGS's starting metric.

    Users and videos differ by orders of magnitude in comparison counts; scaling each coordinate
    by its own curvature lets the first step already be a sensible (diagonal Newton) step, which
    is what makes a warm start from a near-optimal state converge in a few iterations. With s
    held fixed its block is 1: the Newton system leaves s out.
    """
    diagonal = curvature_diagonal(layout, z, curvature, w0)
    return 1 / layout.problem.kernels.clamp(diagonal, CURVATURE_FLOOR)


class ConvergedSolver:
    """Orthant-wise Newton (OWL-QN with s free) on J in float64; deterministic for a given
    input."""

    def __init__(
        self, problem: Problem, config: LicchaviConfig, parameters: Parameters, progress: Progress
    ) -> None:
        self.problem = problem
        self.kernels = problem.kernels
        self.config = config
        self.parameters = parameters
        self.progress = progress
        self.layout = PackedLayout(problem)
        self.z = self.layout.pack(parameters)
        self.stationarity = float("inf")
        self.inner_steps = 0  # conjugate-gradient steps (Hessian-vector products) of the last step

    def current_parameters(self) -> Parameters:
        """θ, ρ, s of the current iterate, in the parameters' dtype."""
        k = self.kernels
        _, rho, s = self.layout.split(self.z)
        dtype = self.problem.dtype
        return Parameters(
            theta=k.astype(self.layout.theta(self.z), dtype),
            rho=k.copy(k.astype(rho, dtype)),
            s=k.copy(k.astype(s, dtype)),
            age=k.copy(self.parameters.age),
        )

    def _direction(
        self, pg: Array, memory: list[tuple[Array, Array, float]], metric: Array
    ) -> Array:
        """-H·pg with the L-BFGS two-loop recursion, starting from the diagonal metric."""
        k = self.kernels
        q = k.copy(pg)
        alphas = []
        for step, change, rho_k in reversed(memory):
            alpha = rho_k * k.dot(step, q)
            alphas.append(alpha)
            q -= alpha * change
        q *= metric
        for (step, change, rho_k), alpha in zip(memory, reversed(alphas), strict=True):
            beta = rho_k * k.dot(change, q)
            q += (alpha - beta) * step
        return -q

    def _newton_direction(self, z: Array, pg: Array, curvature: FitCurvature) -> Array:
        """Approximately solve (∇²F + λ·diag ∇²F)·d = −pg on the free coordinates by
        preconditioned CG.

        Free: ρ, and every x that is non-zero or may leave 0 (pg ≠ 0); s is held fixed. λ is
        DAMPING·min(1, stationarity), so that the system has a bounded solution.
        """
        layout, problem, w0, k = self.layout, self.problem, self.config.w0, self.kernels
        n, n_videos, n_users = layout.n_pairs, layout.n_videos, layout.n_users
        x = z[:n]
        weight = curvature.weight
        free = k.concatenate(
            [
                k.astype((x != 0) | (pg[:n] != 0), "float64"),
                k.zeros(n_videos, "float64") + 1,
                k.zeros(n_users, "float64"),
            ]
        )
        diagonal = k.clamp(curvature_diagonal(layout, z, curvature, w0), DIAGONAL_FLOOR)
        damping = diagonal * (DAMPING * min(1.0, float(abs(pg).max())))
        # Vectors of the packed size are written in place into buffers allocated once: at 5M
        # comparisons each is 80 MB, and a fresh one costs its page faults every time (a product
        # into a new 10M-element array took 24.5 ms of CPU, into an existing one 7.6 ms).
        out = k.zeros(layout.size, "float64")  # its s block stays 0
        scratch = k.zeros(layout.size, "float64")

        def hessian_times(vector: Array) -> Array:
            """∇²F·vector + λ·diag(∇²F)·vector on the free coordinates, into `out`. `vector` is
            zero outside them (CG's vectors all are)."""
            d_rho = vector[n : n + n_videos]
            d_theta = k.take(d_rho, problem.pair_video)
            d_theta += vector[:n]
            change = k.take(d_theta, problem.pair_a)
            change -= k.take(d_theta, problem.pair_b)
            del d_theta
            change *= weight
            per_pair = problem.sum_per_pair(change)
            del change
            result = out
            result[n : n + n_videos] = problem.sum_per_video(per_pair) + 2 * w0 * d_rho
            result[:n] = per_pair
            del per_pair
            result += k.multiply(vector, damping, scratch)
            result *= free
            return result

        preconditioner = free / (diagonal + damping)
        residual = -pg * free
        direction = k.zeros(layout.size, "float64")
        preconditioned = preconditioner * residual
        search = k.copy(preconditioned)
        residual_dot = k.dot(residual, preconditioned)
        target = min(0.1, k.norm(pg)) * k.norm(residual)
        self.inner_steps = 0
        for _ in range(MAX_CG_STEPS):
            self.inner_steps += 1
            curved = hessian_times(search)
            curvature_along = k.dot(search, curved)
            if curvature_along <= 0:
                break
            step = residual_dot / curvature_along
            direction += k.multiply(search, step, scratch)
            residual -= k.multiply(curved, step, scratch)
            if k.norm(residual) <= target:
                break
            k.multiply(preconditioner, residual, preconditioned)
            next_dot = k.dot(residual, preconditioned)
            search *= next_dot / residual_dot
            search += preconditioned
            residual_dot = next_dot
        if k.count_nonzero(direction) == 0:
            return -preconditioner * pg
        return direction

    def run(self, on_iteration: IterationCallback | None = None) -> Progress:
        config, layout, progress, k = self.config, self.layout, self.progress, self.kernels
        w, w0, n = config.w, config.w0, layout.n_pairs
        started = time.perf_counter()
        elapsed_before = progress.history[-1]["elapsed"] if progress.history else 0.0
        z = self.z
        smooth = smooth_part(layout, z, w0, config.optimise_s)
        coupling = coupling_value(layout, z, w)
        total = smooth.value + coupling
        # L-BFGS pairs, for the directions with s free only: each is two vectors of the packed
        # size (1.2 GB for twelve at 5M comparisons), which the Newton steps never read.
        memory: list[tuple[Array, Array, float]] = []
        previous_grad_rho: Array | None = None
        for iteration in range(progress.epoch + 1, progress.epoch + config.max_iterations + 1):
            pg = pseudo_gradient(layout, z, smooth.grad, w)
            self.stationarity = float(abs(pg).max())
            if self.stationarity <= config.tolerance:
                progress.converged = True
                break
            curvature = fit_curvature(layout, z, config.optimise_s)
            if config.optimise_s:
                metric = inverse_curvature(layout, z, curvature, w0)
                direction = self._direction(pg, memory, metric)
                del metric
            else:
                direction = self._newton_direction(z, pg, curvature)
            del curvature
            # A coordinate at 0 may only leave it the way the pseudo-gradient points (OWL-QN's
            # sign rule); the others may move freely, the orthant projection below stops them
            # at 0. Applying the rule to every coordinate would cut good Newton steps short.
            at_zero = z[:n] == 0
            disagree = direction[:n] * pg[:n] >= 0
            if not config.optimise_s:
                disagree &= at_zero
            direction[:n] = k.where(disagree, 0.0, direction[:n])
            if k.dot(direction, pg) >= 0:  # not a descent direction: restart from −pg
                memory.clear()
                direction = -pg
            orthant = k.where(z[:n] != 0, k.sign(z[:n]), k.sign(-pg[:n]))
            step_size = 1.0
            accepted = False
            for _ in range(MAX_BACKTRACKS):
                candidate = z + step_size * direction
                x_new = candidate[:n]
                candidate[:n] = k.where(k.sign(x_new) == orthant, x_new, 0.0)
                smooth_new = smooth_part(layout, candidate, w0, config.optimise_s)
                coupling_new = coupling_value(layout, candidate, w)
                total_new = smooth_new.value + coupling_new
                if total_new <= total + ARMIJO * k.dot(pg, candidate - z):
                    accepted = True
                    break
                step_size *= 0.5  # backtrack
            if not accepted:
                break  # no progress possible at float64 precision
            if config.optimise_s:
                step, change = candidate - z, smooth_new.grad - smooth.grad
                curvature_along = k.dot(step, change)
                if curvature_along > 1e-12 * k.dot(change, change):
                    memory.append((step, change, 1.0 / curvature_along))
                    if len(memory) > HISTORY_SIZE:
                        memory.pop(0)
            z, smooth, total, coupling = candidate, smooth_new, total_new, coupling_new
            self.z = z
            self.parameters.age += 1
            progress.epoch = iteration
            grad_rho = smooth.grad[n : n + layout.n_videos]
            row = {
                "fit": smooth.fit,
                "s": smooth.s_prior,
                "gen": coupling,
                "reg": smooth.reg,
                "l2_norm": k.norm(z[n : n + layout.n_videos]),
                "grad_sp": 0.0 if previous_grad_rho is None else k.dot(previous_grad_rho, grad_rho),
                "grad_norm": k.dot(grad_rho, grad_rho),
                "objective": total,
                "stationarity": self.stationarity,
                "inner_steps": float(self.inner_steps),
                "elapsed": elapsed_before + time.perf_counter() - started,
            }
            previous_grad_rho = grad_rho
            progress.history.append(row)
            if on_iteration is not None and on_iteration(row) is False:
                return progress
        else:
            pg = pseudo_gradient(layout, z, smooth.grad, w)
            self.stationarity = float(abs(pg).max())
            progress.converged = self.stationarity <= config.tolerance
        progress.finished = True
        return progress
