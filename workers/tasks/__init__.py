"""Celery task modules."""
