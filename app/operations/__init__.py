"""Operations: liveness and readiness, and the operator gauges of `/metrics`."""
