"""Scores of the published runs: global and local scores, paged."""
