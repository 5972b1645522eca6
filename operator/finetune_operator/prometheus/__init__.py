"""L2 I/O: the only code that talks to Prometheus (its HTTP query API), for rollout analysis."""
