"""Hand-made request records for analysis tests."""

from __future__ import annotations

import itertools
from typing import Any

from loadkit.limit_signals import Refusal, attribute
from loadkit.records import RequestRecord

_ids = itertools.count()


def rec(
    send: float,
    headers: float | None = None,
    end: float | None = None,
    *,
    status: int = 200,
    code: str | None = None,
    key: str = "k1",
    tier: str = "free",
    endpoint: str = "chat",
    stream: bool = True,
    chunks: list[float] | None = None,
    **kw: Any,
) -> RequestRecord:
    """A record; headers default to send + 0.01, end to headers + 0.1. A 429's
    ``limit_kind`` is what the engines would decide from its code (``limit_signals``),
    unless given."""
    headers = send + 0.01 if headers is None and status != 0 else headers
    end = (headers if headers is not None else send) + 0.1 if end is None else end
    chunks = list(chunks or [])
    fields: dict[str, Any] = dict(
        run_id="t",
        engine="test",
        worker="w",
        request_id=kw.pop("request_id", f"r{next(_ids)}"),
        attempt=1,
        tier=tier,
        key=key,
        endpoint=endpoint,
        stream=stream,
        model="m",
        scheduled_s=kw.pop("scheduled_s", None),
        send_s=send,
        headers_s=headers,
        first_token_s=chunks[0] if chunks else None,
        last_token_s=chunks[-1] if chunks else None,
        end_s=end,
        chunk_s=chunks,
        status=status,
        error_code=code,
        content_chunks=len(chunks),
    )
    if status == 429 and "limit_kind" not in kw:
        who = attribute(Refusal(code=code, type=kw.get("error_type")))
        fields.update(limit_kind=who.kind, limit_signal=who.signal)
    fields.update(kw)
    return RequestRecord(**fields)
