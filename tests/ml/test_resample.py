"""Bootstrap over contributors: users drawn with replacement, each copy a distinct contributor."""

import numpy as np
import pandas as pd

from ml.resample import resample_contributors
from ml.synthetic import SyntheticParams, generate


def test_each_drawn_user_brings_all_their_comparisons_under_a_copy_name() -> None:
    frame = generate(SyntheticParams(n_users=30, n_videos=100, n_comparisons=1000, seed=1))
    comparisons = frame.comparisons.astype({"public_username": str})
    resampled = resample_contributors(comparisons, np.random.default_rng(0))
    assert resampled.public_username.nunique() == 30  # as many contributors as before
    original = resampled.public_username.str.split("#").str[0]
    copies = resampled.public_username.str.split("#").str[1].astype(int)
    drawn = resampled.groupby("public_username").size()
    sizes = comparisons.groupby("public_username").size()
    # Every copy carries exactly its user's comparisons, in their order.
    for name, count in drawn.items():
        user = str(name).split("#")[0]
        assert count == sizes[user]
        mine = resampled[resampled.public_username == name].drop(columns="public_username")
        theirs = comparisons[comparisons.public_username == user].drop(columns="public_username")
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True))
    # A user drawn k times appears as #1 … #k; with replacement some repeat, some are left out.
    per_user = copies.groupby(original).max()
    assert (copies.groupby(original).nunique() == per_user).all()
    assert per_user.max() > 1 and len(per_user) < 30
    again = resample_contributors(comparisons, np.random.default_rng(0))
    pd.testing.assert_frame_equal(resampled, again)
