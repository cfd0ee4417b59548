"""The engine tests' shared fixture: ``client`` runs a test once per HTTP client."""

from __future__ import annotations

import pytest

from loadkit.engine.aiohttp_transport import AiohttpTransport
from loadkit.engine.http1_transport import Http1Transport

CLIENTS: dict[str, type[Http1Transport] | type[AiohttpTransport]] = {
    "loadkit": Http1Transport,
    "aiohttp": AiohttpTransport,
}


@pytest.fixture(params=sorted(CLIENTS))
def client(request: pytest.FixtureRequest) -> str:
    """Each test taking it runs once per transport (``[target] http_client``)."""
    return str(request.param)
