"""Opening, resetting and closing asyncpg connections the way iogate uses them.

Every connection gets iogate's JSON codecs (orjson) and session settings
(``application_name``, ``statement_timeout``). Its ``reset()`` (asyncpg's
ROLLBACK, ``CLOSE ALL``, ``UNLISTEN *``, advisory locks, ``RESET ALL``) is
preceded by ``SET SESSION AUTHORIZATION DEFAULT`` (``RESET ALL`` leaves the
role alone) and followed by ``DISCARD TEMP``: what ``DISCARD ALL`` does
except deallocating the prepared statements the connection keeps cached.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson

from iogate.backends.postgres.errors import PostgresErrors

__all__ = ["PgConnection", "close_connection", "connect_postgres"]

PgConnection = asyncpg.Connection
# Run before and after asyncpg's own reset query (see the module docstring).
_RESET_ROLE = "SET SESSION AUTHORIZATION DEFAULT;"
_RESET_TEMP = "DISCARD TEMP;"


class _Connection(asyncpg.Connection):
    """asyncpg's connection whose reset also restores the role and drops temp tables.

    ``get_reset_query`` is asyncpg's documented way to extend what
    ``reset()`` sends (one round trip).
    """

    def get_reset_query(self) -> str:
        return f"{_RESET_ROLE}\n{super().get_reset_query()}\n{_RESET_TEMP}"


async def connect_postgres(
    dsn: str, *, timeout: float, statement_timeout: float | None
) -> asyncpg.Connection:
    """One asyncpg connection with iogate's codecs and session settings."""
    settings = {"application_name": "iogate"}
    if statement_timeout is not None:
        settings["statement_timeout"] = str(max(1, int(statement_timeout * 1000)))
    with PostgresErrors.connecting(dsn, timeout):
        conn: asyncpg.Connection = await asyncpg.connect(
            dsn, timeout=timeout, server_settings=settings, connection_class=_Connection
        )
    try:
        for type_name in ("json", "jsonb"):
            await conn.set_type_codec(
                type_name,
                encoder=_json_encode,
                decoder=orjson.loads,
                schema="pg_catalog",
            )
    except BaseException:
        conn.terminate()
        raise
    return conn


def _json_encode(value: Any) -> str:
    if isinstance(value, str):
        return value  # already JSON text
    return orjson.dumps(value).decode()


async def close_connection(raw: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(raw.close(), timeout=2.0)
    except BaseException:
        raw.terminate()
        raise
