"""Licchavi scoring engine: pure numerical core (config, data, solvers), no service code."""
