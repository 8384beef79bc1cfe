"""Training runs: creation, fan-out to workers, leases, publication, recovery and wake-ups."""
