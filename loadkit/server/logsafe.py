"""Logging without secrets: a filter for the server's log handlers that replaces every
known access key, and whatever follows ``Bearer`` or an ``Authorization:`` /
``api-key:`` header name, in a record's message and traceback before it is written. The
server never logs a key itself; this catches what libraries quote (aiohttp, asyncio)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable

_AUTH = re.compile(
    r"(?i)(bearer(?:\s|\\t|%20)+|(?:authorization|x-api-key|api-key)\s*[:=]\s*)[^\s'\",]+"
)
REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # longest first, so a key that contains another is replaced whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return _AUTH.sub(lambda m: m.group(1) + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str], access_log: bool) -> logging.Handler:
    """Send warnings and errors (and the access log when on) to stderr through the
    filter; returns the handler (remove it to undo)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter(secrets))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # the root's level (WARNING) stays
    if access_log:
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    return handler
