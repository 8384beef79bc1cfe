"""The vectorised objective: gradients, symmetry of a comparison, uncertainty formulas."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from ml.config import LicchaviConfig
from ml.data import CriterionComparisons
from ml.licchavi import losses, train_criterion
from ml.licchavi.kernels import Array, Kernels, NumpyKernels
from ml.licchavi.problem import Problem
from ml.licchavi.subgradient import PackedLayout, pseudo_gradient, smooth_part
from ml.licchavi.torch_kernels import TorchKernels
from ml.licchavi.uncertainty import global_uncertainty, local_uncertainty
from tests.ml.licchavi_support import reference_comparisons

BOTH_KERNELS = pytest.mark.parametrize(
    "kernels", [NumpyKernels(), TorchKernels("cpu")], ids=["numpy", "torch"]
)


def small_problem(kernels: Kernels) -> tuple[CriterionComparisons, Problem]:
    data = reference_comparisons("xs")
    return data, Problem.build(data, kernels, "float64")


def random_point(problem: Problem, seed: int = 0) -> tuple[Array, ...]:
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(problem.n_pairs) * 1.5
    rho = rng.standard_normal(problem.n_videos)
    s = 0.5 + rng.random(problem.n_users) * 2
    return tuple(problem.kernels.array(values, "float64") for values in (theta, rho, s))


@BOTH_KERNELS
def test_gradients_match_finite_differences(kernels: Kernels) -> None:
    _, problem = small_problem(kernels)
    theta, rho, s = random_point(problem)
    w, w0 = 1.3, 0.7
    grad_theta, grad_rho, grad_s = losses.objective_gradients(problem, theta, rho, s, w, w0)
    step = 1e-6
    rng = np.random.default_rng(1)
    for values, gradient in ((theta, grad_theta), (rho, grad_rho), (s, grad_s)):
        for index in rng.choice(values.shape[0], size=15, replace=False):
            original = float(values[index])
            values[index] = original + step
            upper = float(losses.objective(problem, theta, rho, s, w, w0))
            values[index] = original - step
            lower = float(losses.objective(problem, theta, rho, s, w, w0))
            values[index] = original
            numeric = (upper - lower) / (2 * step)
            assert numeric == pytest.approx(float(gradient[index]), rel=1e-5, abs=1e-5)


@BOTH_KERNELS
@pytest.mark.parametrize("t", [0.0, 0.005, -0.0099, 0.02, -0.3, 0.49, 0.51, 2.0, -9.9, 10.5, -40.0])
def test_piecewise_loss_derivatives(kernels: Kernels, t: float) -> None:
    ratings = kernels.array(np.array([0.3]), "float64")
    point = kernels.array(np.array([t]), "float64")
    loss, derivative = losses.bt_loss_and_derivative(kernels, point, ratings)
    step = 1e-6
    upper, _ = losses.bt_loss_and_derivative(kernels, point + step, ratings)
    lower, _ = losses.bt_loss_and_derivative(kernels, point - step, ratings)
    assert float(derivative[0]) == pytest.approx(float((upper - lower)[0]) / (2 * step), abs=1e-6)
    if 0.01 < abs(t) < 10:  # exact formula region
        exact = np.log(2 * np.sinh(abs(t)) / abs(t)) + 0.3 * t
        assert float(loss[0]) == pytest.approx(exact, rel=1e-12)
        curvature = float(losses.bt_second_derivative(kernels, point)[0])
        assert curvature == pytest.approx(1 / t**2 - 1 / np.sinh(t) ** 2, rel=1e-6)


@BOTH_KERNELS
def test_pseudo_gradient_is_zero_only_at_a_stationary_point(kernels: Kernels) -> None:
    _, problem = small_problem(kernels)
    config = LicchaviConfig(
        solver="converged", personalise=False, device="cpu", compute_uncertainty=False
    )
    result = train_criterion(reference_comparisons("xs"), config)
    assert result.converged and result.stationarity <= config.tolerance
    layout = PackedLayout(problem)
    packed = np.concatenate(
        [
            result.local_scores - result.global_scores[result.local_video_index],
            result.global_scores,
            result.s,
        ]
    )
    point = kernels.array(packed, "float64")
    grad = smooth_part(layout, point, config.w0, optimise_s=False).grad
    assert float(abs(pseudo_gradient(layout, point, grad, config.w)).max()) <= config.tolerance
    point[3] += 0.05  # leave the optimum
    grad = smooth_part(layout, point, config.w0, optimise_s=False).grad
    assert float(abs(pseudo_gradient(layout, point, grad, config.w)).max()) > 1e-3


def swapped(data: CriterionComparisons, mask: np.ndarray) -> CriterionComparisons:
    """The same comparisons with (a, b, r) written as (b, a, -r) where mask is set."""
    return CriterionComparisons(
        criterion=data.criterion,
        user_ids=data.user_ids,
        video_ids=data.video_ids,
        user_index=data.user_index,
        video_a_index=np.where(mask, data.video_b_index, data.video_a_index),
        video_b_index=np.where(mask, data.video_a_index, data.video_b_index),
        ratings=np.where(mask, -data.ratings, data.ratings),
    )


@pytest.mark.parametrize("solver", ["faithful", "converged"])
def test_swapping_a_pair_and_flipping_the_sign_changes_nothing(solver: str) -> None:
    """(a, b, r) and (b, a, −r) are the same comparison.

    Ratings are jittered off the 0.1 grid first: with grid ratings some sums cancel exactly in
    one orientation and leave a 1e-17 residue in the other, and sign(θ − ρ) of that residue
    (0 or ±1) legitimately sends the faithful SGD trajectory elsewhere.
    """
    base = reference_comparisons("xs")
    rng = np.random.default_rng(3)
    jitter = rng.uniform(-0.01, 0.01, base.n_comparisons)
    data = swapped(base, np.zeros(base.n_comparisons, dtype=bool))
    object.__setattr__(data, "ratings", np.clip(base.ratings + jitter, -1, 1))
    mask = rng.random(data.n_comparisons) < 0.5
    config = LicchaviConfig(solver=solver, device="cpu", dtype="float64")
    original = train_criterion(data, config)
    flipped = train_criterion(swapped(data, mask), config)
    np.testing.assert_allclose(flipped.global_scores, original.global_scores, atol=1e-9)
    np.testing.assert_allclose(flipped.local_scores, original.local_scores, atol=1e-9)
    np.testing.assert_allclose(flipped.s, original.s, atol=1e-9)
    np.testing.assert_allclose(flipped.local_uncertainty, original.local_uncertainty, rtol=1e-9)


@BOTH_KERNELS
def test_uncertainty_matches_the_formulas_written_as_loops(kernels: Kernels) -> None:
    data, problem = small_problem(kernels)
    theta, rho, s = random_point(problem, seed=5)
    local = local_uncertainty(problem, theta, s)
    spread = global_uncertainty(problem, theta, rho)
    theta_np, rho_np, s_np = (kernels.to_numpy(values) for values in (theta, rho, s))
    pair_of = {
        (int(u), int(v)): k
        for k, (u, v) in enumerate(zip(problem.pair_user_np, problem.pair_video_np, strict=True))
    }
    for k in range(0, problem.n_pairs, 7):
        user, video = int(problem.pair_user_np[k]), int(problem.pair_video_np[k])
        curvature = 0.0
        for c in np.flatnonzero(data.user_index == user):
            a, b = int(data.video_a_index[c]), int(data.video_b_index[c])
            if video in (a, b):
                t = s_np[user] * (theta_np[pair_of[(user, a)]] - theta_np[pair_of[(user, b)]])
                # f'' is 1/3 on |t| <= 0.01, as the original's polynomial piece
                second = 1 / 3 if abs(t) <= 0.01 else 1 / t**2 - 1 / np.sinh(t) ** 2
                curvature += s_np[user] ** 2 * second
        assert local[k] == pytest.approx(curvature**-0.5, rel=1e-6)
    for video in range(problem.n_videos):
        raters = np.flatnonzero(problem.pair_video_np == video)
        distances = [abs(theta_np[k] - rho_np[video]) for k in raters]
        expected = statistics.median(distances + [4.0] * 5) / len(distances) ** 0.5
        assert spread[video] == pytest.approx(expected, rel=1e-12)
