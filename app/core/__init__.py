"""Cross-cutting pieces of the service: settings, database, errors, security."""
