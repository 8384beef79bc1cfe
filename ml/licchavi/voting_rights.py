"""Voting rights per (user, video) pair: trusted users count fully, untrusted ones share a cap.

Licchavi ties each local score θ_nv to the global ρ_v by w·v_nv·|θ_nv − ρ_v|, so a contributor
pulls ρ_v with a force of at most w·v_nv whatever their comparisons say: v_nv is their voting
right on that video. Following Tournesol's voting rights, a trusted contributor gets 1, and the
untrusted contributors of a video share a budget that grows with the trusted voting right on
it:

    budget_v = OVER_TRUST_BIAS + OVER_TRUST_SCALE · (number of trusted contributors of v)
    v_nv     = min(1, budget_v / number of untrusted contributors of v)   (n untrusted)

so however many accounts an attacker creates, their combined pull on a video is at most
w·budget_v. Without trust data (nobody trusted) every right is 1: the v1 objective.
"""

from __future__ import annotations

import numpy as np

# Tournesol uses 2 and 0.1 (its backend's OVER_TRUST_BIAS and OVER_TRUST_SCALE, Solidago's
# AffineOvertrust min_overtrust and overtrust_ratio). Under Licchavi's coupling one voting unit
# is worth a lot on a thinly compared video: on the attacked set of docs/solvers.md ("Trust and
# voting rights") a budget of 2.5 let 5+ fake accounts lift the target 920 of 2,670 ranks
# despite 5 trusted contributors, and 1.0 still 457. A budget of 0.1 + 0.02 per trusted
# contributor keeps that lift under a tenth of v1's.
OVER_TRUST_BIAS = 0.1
OVER_TRUST_SCALE = 0.02


def voting_rights(
    pair_user: np.ndarray,
    pair_video: np.ndarray,
    trusted_users: np.ndarray | None,
    n_videos: int,
    *,
    bias: float | None = None,
    scale: float | None = None,
) -> np.ndarray | None:
    """v_nv per pair (float64), or None when every right is 1 (no user trusted: v1's J).

    trusted_users: boolean per user index, or None for no trust data. bias and scale default to
    the module's constants, read at call time (bench/sybil_curve.py measures other values).
    """
    bias = OVER_TRUST_BIAS if bias is None else bias
    scale = OVER_TRUST_SCALE if scale is None else scale
    if trusted_users is None or not bool(np.any(trusted_users)):
        return None
    trusted_pair = np.asarray(trusted_users, dtype=bool)[pair_user]
    trusted_count = np.bincount(pair_video[trusted_pair], minlength=n_videos)
    untrusted_count = np.bincount(pair_video[~trusted_pair], minlength=n_videos)
    budget = bias + scale * trusted_count.astype(np.float64)
    with np.errstate(divide="ignore"):
        share = np.minimum(1.0, budget / untrusted_count)
    return np.where(trusted_pair, 1.0, share[pair_video])
