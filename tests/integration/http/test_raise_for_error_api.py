"""``raise_for_error()`` on Results from a real upstream and a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from iogate import AsyncPostgreSQLManager, DatabaseOptions
from iogate.errors import AuthenticationError, DatabaseConnectionError, HTTPStatusError, QueryError
from tests.conftest import free_port


async def test_upstream_failures_raise_their_classes(make_manager: Callable[..., Any]) -> None:
    manager = make_manager()
    ok = await manager.get("/ok")
    assert ok.raise_for_error() is ok
    with pytest.raises(HTTPStatusError) as missing:
        (await manager.get("/status/404")).raise_for_error("fetch")
    assert missing.value.status_code == 404
    with pytest.raises(AuthenticationError):
        (await manager.get("/status/401")).raise_for_error()


async def test_database_failures_raise_their_classes(postgres_url: str) -> None:
    manager = AsyncPostgreSQLManager(postgres_url, options=DatabaseOptions(acquire_timeout=2))
    try:
        with pytest.raises(QueryError, match="select from nowhere"):
            (await manager.execute_query("SELECT * FROM no_such_table_xyz")).raise_for_error(
                "select from nowhere"
            )
    finally:
        await manager.close()
    gone = AsyncPostgreSQLManager(
        f"postgresql://postgres@127.0.0.1:{free_port()}/test",
        options=DatabaseOptions(acquire_timeout=1),
    )
    try:
        with pytest.raises(DatabaseConnectionError):
            (await gone.execute_query("SELECT 1")).raise_for_error()
    finally:
        await gone.close()
