"""`python -m app.cli` runs the `licchavi` command line."""

from app.cli.main import main

main()
