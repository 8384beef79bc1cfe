"""Sweeps from the service side: submission and control, scheduling, execution, results."""
