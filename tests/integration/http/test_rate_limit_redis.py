"""A rate limit shared through Redis: two managers, one budget of calls."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

from iogate.backends.http import AsyncAPIManager

from .conftest import Upstream, unavailable

REDIS_URL = os.environ.get("IOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_storage_uri() -> str:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            pass
    except OSError:
        unavailable(f"no Redis server at {parts.hostname}:{parts.port or 6379}")
    return f"async+{REDIS_URL}"


@pytest.mark.redis
async def test_rate_limit_is_shared_through_redis(
    upstream: Upstream, redis_storage_uri: str
) -> None:
    name = f"iogate-test-{uuid.uuid4().hex}"  # a fresh window for this run
    options = {"name": name, "rate_limit": "3/minute", "rate_limit_storage": redis_storage_uri}
    async with (
        AsyncAPIManager(upstream.base_url, **options) as first,  # type: ignore[arg-type]
        AsyncAPIManager(upstream.base_url, **options) as second,  # type: ignore[arg-type]
    ):
        outcomes = [
            await first.get("/ok"),
            await second.get("/ok"),
            await first.get("/ok"),
            await second.get("/ok"),
        ]
    assert [r.success for r in outcomes] == [True, True, True, False]
    assert outcomes[3].error_type == "rate_limited"
    assert outcomes[3].retry_after is not None
    assert upstream.hits["/v1/ok"] == 3
