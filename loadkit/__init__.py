"""loadkit: load-test OpenAI-compatible AI APIs and prove whether their rate limits hold."""

__version__ = "0.1.0"
