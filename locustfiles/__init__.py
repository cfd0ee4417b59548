"""Plain locustfiles for loadkit tiers (installed so `loadkit run --engine locust` can find them)."""
