"""Load engines: the asyncio engine (this package) and the Locust users (locustfiles/)."""
