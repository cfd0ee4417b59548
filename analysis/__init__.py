"""Analysis of loadkit runs: metrics, limit verdicts, charts, report, comparison.

Never imports an engine, Locust or aiohttp."""
