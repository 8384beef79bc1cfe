"""Celery workers: thin tasks that load rows, call `ml`, and write results."""
