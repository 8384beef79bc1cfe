"""Bootstrap resamples of a comparison set over its contributors (users drawn with replacement)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def resample_contributors(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """As many users as ``frame`` has, drawn with replacement, each with all their comparisons.

    A user drawn k times appears as k distinct users (``name#1`` … ``name#k``): each copy is an
    independent contributor to the model, which is what the bootstrap over contributors means.
    """
    users = frame["public_username"].astype(str).to_numpy()
    names, codes = np.unique(users, return_inverse=True)
    rows = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes, minlength=len(names))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    draws = np.sort(rng.integers(0, len(names), len(names)))
    # Copy number of each draw among the draws of the same user (1, 2, …).
    first = np.searchsorted(draws, draws, side="left")
    copy = np.arange(len(draws)) - first + 1
    lengths = sizes[draws]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    picked = rows[np.repeat(starts[draws], lengths) + within]
    labels = np.char.add(np.char.add(names[draws].astype(str), "#"), copy.astype(str))
    resampled = frame.iloc[picked].reset_index(drop=True)
    resampled["public_username"] = np.repeat(labels, lengths)
    return resampled
