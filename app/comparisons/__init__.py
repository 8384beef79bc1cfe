"""Comparisons: single and bulk writes, upserts, CSV datasets, export and import."""
