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
global scores are not touched.

A second shared taste. Users who share a taste independent of the crowd's get a_n ≈ 0 and their
own comparisons alone (20–100 each, most videos compared once) say little; what the others who
share the taste compared says more. So, by default (`personal_tastes`):

1. The users whose slope is below SEED_SLOPE (the ones ρ explains least) seed a taste φ, the
   Bradley–Terry scores of their comparisons alone with a Gaussian prior; for each of their pairs
   also φ^(−n), the same scores without user n's comparisons (one diagonal Newton step).
2. If φ correlates with ρ beyond MAX_TASTE_CORRELATION over the videos its users compared, it is
   the global taste again up to a slope (inverted users, dense sets) and nothing changes.
3. Every user is re-fitted once more with the tie pulling towards a_n φ^(−n) instead of a_n ρ.
   A user whose objective is lower by more than MEMBER_LOG_ODDS under the taste (prior
   probability 1/4 of belonging to it) keeps those scores; the others keep the first re-fit's.
   The taste is scored without the user's own comparisons, so the test is out of sample: a user
   who merely fits their own noise gains nothing from it.

Measured alternatives (a coupling chosen per user by cross-validation on held-out comparisons, a
hierarchical per-user coupling, a second shared factor by alternating least squares, soft
memberships, several rounds of reassignment) are in docs/solvers.md, "Personal scores".

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
# A second shared taste (module docstring) starts from the users whose slope on ρ is below this:
# the ones the global scores explain least.
SEED_SLOPE = 0.9
# Fewer users than this do not make a shared taste.
MIN_TASTE_USERS = 3
# Gaussian prior weight on a shared taste's scores (the solver's w0 plays this part for ρ).
TASTE_PRIOR = 1.0
# A taste whose scores correlate with ρ more than this (over the videos its users compared) is
# the global taste again up to a slope: inverted users, or dense sets where every taste is ρ.
MAX_TASTE_CORRELATION = 0.4
# Log prior odds against joining the taste: prior probability 1/4 (measured in docs/solvers.md).
MEMBER_LOG_ODDS = float(np.log(3.0))
# Newton steps of the one-parameter fits that pick the users worth re-fitting to the taste.
PROFILE_STEPS = 6

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

    def of_users(self, users: np.ndarray) -> tuple[UserComparisons, np.ndarray]:
        """The comparisons of the users in the mask ``users`` alone (users keep their numbers),
        and the positions of their pairs among these pairs."""
        pairs = np.flatnonzero(users[self.pair_user])
        renumbered = np.full(self.n_pairs, -1, dtype=self.pair_a.dtype)
        renumbered[pairs] = np.arange(pairs.size, dtype=self.pair_a.dtype)
        kept = users[self.comparison_user]
        subset = UserComparisons(
            n_users=self.n_users,
            comparison_user=self.comparison_user[kept],
            pair_a=renumbered[self.pair_a[kept]],
            pair_b=renumbered[self.pair_b[kept]],
            ratings=self.ratings[kept],
            pair_user=self.pair_user[pairs],
            pair_video=self.pair_video[pairs],
        )
        return subset, pairs

    @classmethod
    def of(cls, problem: Problem) -> UserComparisons:
        """The problem's index arrays, on NumPy whatever kernels it runs on."""
        k = problem.kernels
        return cls(
            n_users=problem.n_users,
            comparison_user=k.to_numpy(problem.comparison_user),
            pair_a=k.to_numpy(problem.pair_a),
            pair_b=k.to_numpy(problem.pair_b),
            ratings=np.asarray(k.to_numpy(problem.ratings), dtype=np.float64),
            pair_user=problem.pair_user_np,
            pair_video=problem.pair_video_np,
        )


@dataclass(frozen=True)
class Personalisation:
    """Re-fitted local scores per pair, their spread, each user's slope and shared taste."""

    theta: np.ndarray  # per pair
    uncertainty: np.ndarray  # per pair: (s_n² Σ f'' + w_p)^(−1/2), the re-fit's curvature
    slope: np.ndarray  # per user: a_n (0 for users tied to the second taste)
    second_taste: np.ndarray  # per user: tied to the second shared taste instead of ρ
    iterations: int  # Newton steps
    converged: bool  # largest gradient coordinate ≤ TOLERANCE


class _UserFit:
    """The per-user objective for a coupling, with ρ and s fixed."""

    def __init__(
        self, data: UserComparisons, target: np.ndarray, s: np.ndarray, coupling: float
    ) -> None:
        self.data = data
        self.target = target  # per pair: ρ_v, or a shared taste's scores
        self.scale = s[data.comparison_user]
        self.coupling = coupling
        self.slope_curvature = (
            np.bincount(data.pair_user, coupling * self.target**2, data.n_users) + SLOPE_PRIOR
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
        residual = theta - slope[self.data.pair_user] * self.target
        offset = slope - 1
        value = (
            float(loss.sum())
            + 0.5 * self.coupling * _dot(residual, residual)
            + 0.5 * SLOPE_PRIOR * _dot(offset, offset)
        )
        grad_theta = self._per_pair(derivative * self.scale) + self.coupling * residual
        grad_slope = SLOPE_PRIOR * offset - self._per_user(self.coupling * residual * self.target)
        return value, grad_theta, grad_slope

    def per_user_value(self, theta: np.ndarray, slope: np.ndarray) -> np.ndarray:
        """Each user's share of the objective at (θ, a)."""
        loss, _ = bt_loss_and_derivative(_NUMPY, self._t(theta), self.data.ratings)
        residual = theta - slope[self.data.pair_user] * self.target
        return (
            np.bincount(self.data.comparison_user, loss, self.data.n_users)
            + self._per_user(0.5 * self.coupling * residual**2)
            + 0.5 * SLOPE_PRIOR * (slope - 1) ** 2
        )

    def _pair_sum(self, values: np.ndarray) -> np.ndarray:
        n = self.data.n_pairs
        return np.bincount(self.data.pair_a, values, n) + np.bincount(self.data.pair_b, values, n)

    def pair_curvature(self, theta: np.ndarray) -> np.ndarray:
        """Σ s² f''(t) over each pair's comparisons: the fit's curvature along θ_nv."""
        return self._pair_sum(bt_second_derivative(_NUMPY, self._t(theta)) * self.scale**2)

    def newton_direction(
        self, theta: np.ndarray, grad_theta: np.ndarray, grad_slope: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Approximately solve the Newton system by preconditioned CG.

        The preconditioner keeps, of each user's block, the diagonal of θ's part and the whole
        coupling of the slope a_n to the user's θ_nv (an arrow matrix, inverted exactly through
        the scalar Schur complement of a_n): with the diagonal alone, a user with many videos
        couples every θ_nv through a_n and CG needed about twice the iterations.
        """
        data, coupling, target = self.data, self.coupling, self.target
        curvature = bt_second_derivative(_NUMPY, self._t(theta)) * self.scale**2
        inverse_theta = 1.0 / (self._pair_sum(curvature) + coupling)
        schur = self.slope_curvature - self._per_user(coupling**2 * target**2 * inverse_theta)

        def precondition(r_theta: np.ndarray, r_slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # c g D⁻¹ is recomputed rather than kept: one array per pair less at the peak.
            z_theta = inverse_theta * r_theta
            z_slope = (r_slope + coupling * self._per_user(target * z_theta)) / schur
            z_theta += coupling * inverse_theta * target * z_slope[data.pair_user]
            return z_theta, z_slope

        def times(v_theta: np.ndarray, v_slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            tied = coupling * (v_theta - v_slope[data.pair_user] * target)
            out_theta = self._per_pair(curvature * (v_theta[data.pair_a] - v_theta[data.pair_b]))
            out_theta += tied
            out_slope = SLOPE_PRIOR * v_slope - self._per_user(tied * target)
            return out_theta, out_slope

        r_theta, r_slope = -grad_theta, -grad_slope
        d_theta, d_slope = np.zeros_like(r_theta), np.zeros_like(r_slope)
        z_theta, z_slope = precondition(r_theta, r_slope)
        p_theta, p_slope = z_theta.copy(), z_slope.copy()
        rz = _dot(r_theta, z_theta) + _dot(r_slope, z_slope)
        norm = np.sqrt(_dot(r_theta, r_theta) + _dot(r_slope, r_slope))
        # Inexact Newton: a loose solve far from the optimum, a tight one near it.
        wanted = min(0.1, np.sqrt(norm)) * norm
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
            if np.sqrt(_dot(r_theta, r_theta) + _dot(r_slope, r_slope)) <= wanted:
                break
            z_theta, z_slope = precondition(r_theta, r_slope)
            next_rz = _dot(r_theta, z_theta) + _dot(r_slope, z_slope)
            p_theta = z_theta + (next_rz / rz) * p_theta
            p_slope = z_slope + (next_rz / rz) * p_slope
            rz = next_rz
        return d_theta, d_slope

    def minimise(self, start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, bool]:
        """Newton with backtracking from θ = ``start`` (default: the target), a = 1."""
        theta = (self.target if start is None else start).copy()
        slope = np.ones(self.data.n_users)
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


def _weighted_corr(x: np.ndarray, y: np.ndarray, weight: np.ndarray) -> float:
    total = weight.sum()
    if total <= 0:
        return 1.0
    dx = x - (weight * x).sum() / total
    dy = y - (weight * y).sum() / total
    spread = np.sqrt((weight * dx * dx).sum() * (weight * dy * dy).sum())
    return float((weight * dx * dy).sum() / spread) if spread > 0 else 1.0


@dataclass(frozen=True)
class _Taste:
    """A shared taste: its scores per video, and per pair those scores without the pair's user."""

    scores: np.ndarray  # per video
    without_user: np.ndarray  # per pair
    converged: bool


def _shared_taste(
    data: UserComparisons, s: np.ndarray, members: np.ndarray, n_videos: int
) -> _Taste:
    """Scores fitted to the members' comparisons alone (Bradley–Terry with a Gaussian prior).

        minimise over φ:  Σ_{c by a member} f(s_n (φ_a − φ_b), r_c) + (TASTE_PRIOR / 2) Σ_v φ_v²

    by Newton steps with diagonally preconditioned CG, and for each pair (n, v) the leave-one-
    user-out value φ_v^(−n) from one diagonal Newton step that removes user n's comparisons:
    φ_v + g_nv / (H_v − h_nv), with g_nv and h_nv user n's gradient and curvature at v. A user's
    evidence for the taste is then judged against what the *other* members say.
    """
    keep = members[data.comparison_user]
    side_a = data.pair_a[keep]
    side_b = data.pair_b[keep]
    video_a = data.pair_video[side_a]
    video_b = data.pair_video[side_b]
    ratings = data.ratings[keep]
    scale = s[data.comparison_user[keep]]

    def per_video(values: np.ndarray, sign: float) -> np.ndarray:
        return np.bincount(video_a, values, n_videos) + sign * np.bincount(
            video_b, values, n_videos
        )

    def evaluate(phi: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        t = scale * (phi[video_a] - phi[video_b])
        loss, derivative = bt_loss_and_derivative(_NUMPY, t, ratings)
        gradient = per_video(derivative * scale, -1.0) + TASTE_PRIOR * phi
        return float(loss.sum()) + 0.5 * TASTE_PRIOR * _dot(phi, phi), gradient, t

    phi = np.zeros(n_videos)
    value, gradient, t = evaluate(phi)
    converged = False
    for _ in range(NEWTON_STEPS):
        if np.abs(gradient).max(initial=0.0) <= TOLERANCE:
            converged = True
            break
        curvature = bt_second_derivative(_NUMPY, t) * scale**2
        diagonal = per_video(curvature, 1.0) + TASTE_PRIOR
        residual = -gradient
        direction = np.zeros(n_videos)
        z = residual / diagonal
        p = z.copy()
        rz = _dot(residual, z)
        norm = np.sqrt(_dot(residual, residual))
        target = min(0.1, np.sqrt(norm)) * norm
        for _ in range(CG_STEPS):
            q = per_video(curvature * (p[video_a] - p[video_b]), -1.0) + TASTE_PRIOR * p
            step = rz / _dot(p, q)
            direction += step * p
            residual -= step * q
            if np.sqrt(_dot(residual, residual)) <= target:
                break
            z = residual / diagonal
            next_rz = _dot(residual, z)
            p = z + (next_rz / rz) * p
            rz = next_rz
        descent = _dot(gradient, direction)
        step = 1.0
        for _ in range(MAX_BACKTRACKS):
            new = evaluate(phi + step * direction)
            if new[0] <= value + ARMIJO * step * descent:
                break
            step *= 0.5
        else:
            break
        phi = phi + step * direction
        value, gradient, t = new
    _, derivative = bt_loss_and_derivative(_NUMPY, t, ratings)
    curvature = bt_second_derivative(_NUMPY, t) * scale**2
    n_pairs = data.n_pairs
    own_gradient = np.bincount(side_a, derivative * scale, n_pairs) - np.bincount(
        side_b, derivative * scale, n_pairs
    )
    own_curvature = np.bincount(side_a, curvature, n_pairs) + np.bincount(
        side_b, curvature, n_pairs
    )
    total_curvature = (per_video(curvature, 1.0) + TASTE_PRIOR)[data.pair_video]
    without_user = phi[data.pair_video] + own_gradient / (total_curvature - own_curvature)
    return _Taste(scores=phi, without_user=without_user, converged=converged)


def personalise(
    data: UserComparisons,
    rho: np.ndarray,
    s: np.ndarray,
    coupling: float,
    shared_taste: bool = True,
) -> Personalisation:
    """Re-fit every user's local scores around the fixed global scores ρ (module docstring)."""
    rho = np.asarray(rho, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    fit = _UserFit(data, rho[data.pair_video], s, coupling)
    theta, slope, iterations, converged = fit.minimise()
    member = np.zeros(data.n_users, dtype=bool)
    if shared_taste:
        member, taste_theta, taste_iterations, taste_converged = _second_taste(
            data, rho, s, coupling, fit, theta, slope
        )
        theta = np.where(member[data.pair_user], taste_theta, theta)
        iterations += taste_iterations
        converged = converged and taste_converged
    curvature = fit.pair_curvature(theta)
    with np.errstate(divide="ignore"):
        spread = (curvature + coupling) ** -0.5
    return Personalisation(
        theta=theta,
        uncertainty=spread,
        slope=np.where(member, 0.0, slope),
        second_taste=member,
        iterations=iterations,
        converged=converged,
    )


def _profile_loss(data: UserComparisons, target: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per user, min over b of Σ_c f(s_n b (g_a − g_b), r_c) + (λ/2)(b − 1)²: how well the
    target g (per pair) explains the user's comparisons up to a slope, θ_n = b g."""
    users = data.comparison_user
    spread = s[users] * (target[data.pair_a] - target[data.pair_b])
    slope = np.ones(data.n_users)
    for _ in range(PROFILE_STEPS):
        t = slope[users] * spread
        _, derivative = bt_loss_and_derivative(_NUMPY, t, data.ratings)
        gradient = np.bincount(users, derivative * spread, data.n_users)
        curvature = np.bincount(users, bt_second_derivative(_NUMPY, t) * spread**2, data.n_users)
        slope -= (gradient + SLOPE_PRIOR * (slope - 1)) / (curvature + SLOPE_PRIOR)
    loss, _ = bt_loss_and_derivative(_NUMPY, slope[users] * spread, data.ratings)
    return np.bincount(users, loss, data.n_users) + 0.5 * SLOPE_PRIOR * (slope - 1) ** 2


def _second_taste(
    data: UserComparisons,
    rho: np.ndarray,
    s: np.ndarray,
    coupling: float,
    fit: _UserFit,
    theta: np.ndarray,
    slope: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Which users a second shared taste explains better than the global scores, and their
    local scores tied to it (module docstring, "A second shared taste")."""
    none = np.zeros(data.n_users, dtype=bool)
    seeds = slope < SEED_SLOPE
    if seeds.sum() < MIN_TASTE_USERS:
        return none, theta, 0, True
    taste = _shared_taste(data, s, seeds, rho.shape[0])
    seen = np.bincount(data.pair_video, seeds[data.pair_user].astype(np.float64), rho.shape[0])
    if abs(_weighted_corr(taste.scores, rho, seen)) > MAX_TASTE_CORRELATION:
        # The taste is the global one again, up to a slope: the slope already serves it.
        return none, theta, 0, taste.converged
    # Re-fitting every user to the taste doubled the re-fit's time, for a handful of members:
    # only users whose comparisons a scaled taste explains better than scaled global scores are
    # re-fitted (on the niche sets every member had a profile gain above 1.1, log 3; 10 % of
    # the users above 0).
    gain = _profile_loss(data, rho[data.pair_video], s) - _profile_loss(data, taste.without_user, s)
    candidates = gain > 0
    subset, pairs = data.of_users(candidates)
    taste_fit = _UserFit(subset, taste.without_user[pairs], s, coupling)
    subset_theta, taste_slope, iterations, converged = taste_fit.minimise(theta[pairs])
    evidence = fit.per_user_value(theta, slope) - taste_fit.per_user_value(
        subset_theta, taste_slope
    )
    member = candidates & (evidence > MEMBER_LOG_ODDS)
    if member.sum() < MIN_TASTE_USERS:
        member = none
    taste_theta = theta.copy()
    taste_theta[pairs] = subset_theta
    return member, taste_theta, iterations, converged and taste.converged
