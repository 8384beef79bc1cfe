"""The web app: one page served under `/`, built on the public API only (the reference frontend)."""
