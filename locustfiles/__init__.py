"""Plain locustfiles for loadkit tiers (installed so `loadkit run --engine locust` finds them)."""
