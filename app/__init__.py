"""Licchavi scoring service: HTTP API and database layer (never imports torch)."""
