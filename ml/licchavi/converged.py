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
All arithmetic is float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ml.config import LicchaviConfig
from ml.licchavi import losses
from ml.licchavi.parameters import Parameters, Progress
from ml.licchavi.problem import Problem
from ml.licchavi.subgradient import PackedLayout, coupling_term, pseudo_gradient, smooth_part

HISTORY_SIZE = 12
MAX_CG_STEPS = 200
ARMIJO = 1e-4
MAX_BACKTRACKS = 50

IterationCallback = Callable[[dict[str, float]], bool]


CURVATURE_FLOOR = 1e-3
# Levenberg–Marquardt damping of the Newton system, times min(1, stationarity). The smooth part
# is flat along shifting all of one user's x by the same amount (the fit only sees differences):
# while all of a user's x are free the system is singular, the L1 term's slope w·Σsign(x) lies
# along that flat direction, and undamped CG ran off to steps of 1e32 that no backtracking
# recovers (the solver stopped after 1 to 5 iterations, far from stationary). The damping bounds
# the step there; shrinking with stationarity keeps Newton's fast convergence near the optimum.
DAMPING = 1e-2


def inverse_curvature(layout: PackedLayout, z: torch.Tensor, w0: float) -> torch.Tensor:
    """1 / diagonal of ∇²F, the L-BFGS starting metric.

    Users and videos differ by orders of magnitude in comparison counts; scaling each coordinate
    by its own curvature lets the first step already be a sensible (diagonal Newton) step, which
    is what makes a warm start from a near-optimal state converge in a few iterations.
    """
    problem = layout.problem
    x, rho, s = layout.split(z)
    theta = x + rho.index_select(0, problem.pair_video)
    scale = s.index_select(0, problem.comparison_user)
    difference = theta.index_select(0, problem.pair_a) - theta.index_select(0, problem.pair_b)
    curvature = losses.bt_second_derivative(problem.kernels, scale * difference)
    per_pair = torch.zeros(layout.n_pairs, dtype=z.dtype, device=z.device)
    per_pair.scatter_add_(0, problem.pair_a, curvature * scale * scale)
    per_pair.scatter_add_(0, problem.pair_b, curvature * scale * scale)
    per_video = problem.sum_per_video(per_pair) + 2 * w0
    per_user = problem.sum_per_user(curvature * difference * difference) + 1 + 1 / (s * s)
    return torch.cat([per_pair, per_video, per_user]).clamp_min_(CURVATURE_FLOOR).reciprocal_()


class ConvergedSolver:
    """OWL-QN on J in float64; deterministic for a given input."""

    def __init__(
        self, problem: Problem, config: LicchaviConfig, parameters: Parameters, progress: Progress
    ) -> None:
        self.problem = problem
        self.config = config
        self.parameters = parameters
        self.progress = progress
        self.layout = PackedLayout(problem)
        self.z = self.layout.pack(parameters)
        self.stationarity = float("inf")
        self.inner_steps = 0  # conjugate-gradient steps (Hessian-vector products) of the last step

    def current_parameters(self) -> Parameters:
        """θ, ρ, s of the current iterate, in the parameters' dtype."""
        _, rho, s = self.layout.split(self.z)
        dtype = self.parameters.theta.dtype
        return Parameters(
            theta=self.layout.theta(self.z).to(dtype),
            rho=rho.to(dtype).clone(),
            s=s.to(dtype).clone(),
            age=self.parameters.age.clone(),
        )

    def _direction(
        self,
        pg: torch.Tensor,
        memory: list[tuple[torch.Tensor, torch.Tensor, float]],
        metric: torch.Tensor,
    ) -> torch.Tensor:
        """-H·pg with the L-BFGS two-loop recursion, starting from the diagonal metric."""
        q = pg.clone()
        alphas = []
        for step, change, rho_k in reversed(memory):
            alpha = rho_k * float(step @ q)
            alphas.append(alpha)
            q.add_(change, alpha=-alpha)
        q.mul_(metric)
        for (step, change, rho_k), alpha in zip(memory, reversed(alphas), strict=True):
            beta = rho_k * float(change @ q)
            q.add_(step, alpha=alpha - beta)
        return -q

    def _newton_direction(
        self, z: torch.Tensor, pg: torch.Tensor, metric: torch.Tensor
    ) -> torch.Tensor:
        """Approximately solve ∇²F·d = −pg on the free coordinates by preconditioned CG.

        Free: ρ, and every x that is non-zero or may leave 0 (pg ≠ 0); s is held fixed. The
        system is damped (DAMPING) so that it has a bounded solution.
        """
        layout, problem, w0 = self.layout, self.problem, self.config.w0
        n, n_videos = layout.n_pairs, layout.n_videos
        x, rho, s = layout.split(z)
        theta = x + rho.index_select(0, problem.pair_video)
        scale = s.index_select(0, problem.comparison_user)
        difference = theta.index_select(0, problem.pair_a) - theta.index_select(0, problem.pair_b)
        weight = losses.bt_second_derivative(problem.kernels, scale * difference) * scale * scale
        free = torch.ones_like(z)
        free[:n] = ((x != 0) | (pg[:n] != 0)).to(z.dtype)
        free[n + n_videos :] = 0.0

        damping = DAMPING * min(1.0, float(pg.abs().max()))

        def hessian_times(vector: torch.Tensor) -> torch.Tensor:
            vector = vector * free
            d_rho = vector[n : n + n_videos]
            d_theta = vector[:n] + d_rho.index_select(0, problem.pair_video)
            change = d_theta.index_select(0, problem.pair_a) - d_theta.index_select(
                0, problem.pair_b
            )
            per_pair = problem.sum_per_pair(weight * change)
            out = torch.zeros_like(vector)
            out[:n] = per_pair
            out[n : n + n_videos] = problem.sum_per_video(per_pair) + 2 * w0 * d_rho
            out.add_(vector, alpha=damping)
            return out * free

        preconditioner = free / (metric.reciprocal() + damping)
        residual = -pg * free
        direction = torch.zeros_like(z)
        preconditioned = preconditioner * residual
        search = preconditioned.clone()
        residual_dot = float(residual @ preconditioned)
        target = min(0.1, float(pg.norm())) * float(residual.norm())
        self.inner_steps = 0
        for _ in range(MAX_CG_STEPS):
            self.inner_steps += 1
            curved = hessian_times(search)
            curvature = float(search @ curved)
            if curvature <= 0:
                break
            step = residual_dot / curvature
            direction.add_(search, alpha=step)
            residual.add_(curved, alpha=-step)
            if float(residual.norm()) <= target:
                break
            preconditioned = preconditioner * residual
            next_dot = float(residual @ preconditioned)
            search.mul_(next_dot / residual_dot).add_(preconditioned)
            residual_dot = next_dot
        if not bool(direction.any()):
            return -preconditioner * pg
        return direction

    def run(self, on_iteration: IterationCallback | None = None) -> Progress:
        config, layout, progress = self.config, self.layout, self.progress
        w, w0, n = config.w, config.w0, layout.n_pairs
        started = time.perf_counter()
        elapsed_before = progress.history[-1]["elapsed"] if progress.history else 0.0
        z = self.z
        smooth = smooth_part(layout, z, w0, config.optimise_s)
        total = smooth.value + coupling_term(layout, z, w)
        memory: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        previous_grad_rho: torch.Tensor | None = None
        for iteration in range(progress.epoch + 1, progress.epoch + config.max_iterations + 1):
            pg = pseudo_gradient(layout, z, smooth.grad, w)
            self.stationarity = float(pg.abs().max())
            if self.stationarity <= config.tolerance:
                progress.converged = True
                break
            metric = inverse_curvature(layout, z, w0)
            if config.optimise_s:
                direction = self._direction(pg, memory, metric)
            else:
                direction = self._newton_direction(z, pg, metric)
            # A coordinate at 0 may only leave it the way the pseudo-gradient points (OWL-QN's
            # sign rule); the others may move freely, the orthant projection below stops them
            # at 0. Applying the rule to every coordinate would cut good Newton steps short.
            at_zero = z[:n] == 0
            disagree = direction[:n] * pg[:n] >= 0
            if not config.optimise_s:
                disagree &= at_zero
            direction[:n] = torch.where(disagree, 0.0, direction[:n])
            if float(direction @ pg) >= 0:  # not a descent direction: restart from −pg
                memory.clear()
                direction = -pg
            orthant = torch.where(z[:n] != 0, torch.sign(z[:n]), torch.sign(-pg[:n]))
            step_size = 1.0
            accepted = False
            for _ in range(MAX_BACKTRACKS):
                candidate = z + step_size * direction
                x_new = candidate[:n]
                candidate[:n] = torch.where(torch.sign(x_new) == orthant, x_new, 0.0)
                smooth_new = smooth_part(layout, candidate, w0, config.optimise_s)
                total_new = smooth_new.value + coupling_term(layout, candidate, w)
                if total_new <= total + ARMIJO * float(pg @ (candidate - z)):
                    accepted = True
                    break
                step_size *= 0.5  # backtrack
            if not accepted:
                break  # no progress possible at float64 precision
            step, change = candidate - z, smooth_new.grad - smooth.grad
            curvature = float(step @ change)
            if curvature > 1e-12 * float(change @ change):
                memory.append((step, change, 1.0 / curvature))
                if len(memory) > HISTORY_SIZE:
                    memory.pop(0)
            z, smooth, total = candidate, smooth_new, total_new
            self.z = z
            self.parameters.age += 1
            progress.epoch = iteration
            grad_rho = smooth.grad[n : n + layout.n_videos]
            row = {
                "fit": smooth.fit,
                "s": smooth.s_prior,
                "gen": coupling_term(layout, z, w),
                "reg": smooth.reg,
                "l2_norm": float(z[n : n + layout.n_videos].norm()),
                "grad_sp": 0.0
                if previous_grad_rho is None
                else float(previous_grad_rho @ grad_rho),
                "grad_norm": float(grad_rho @ grad_rho),
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
            self.stationarity = float(pg.abs().max())
            progress.converged = self.stationarity <= config.tolerance
        progress.finished = True
        return progress
