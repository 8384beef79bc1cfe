"""The `licchavi` command line."""
