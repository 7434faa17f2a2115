"""The admin listener (its own port): metrics, liveness, readiness."""
