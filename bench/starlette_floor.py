"""The gateway bench's floor: the least an HTTP point query can cost in Python.

A bare Starlette app with one ``POST /database/execute`` endpoint doing the
same shape of work as iogate's route -- parse the JSON body, run the query
with the same driver, serialise the rows with orjson -- and nothing else: no
validation, auth, deadline, metrics, stats or logging. ``bench/gateway_bench.py``
serves it with uvicorn exactly as ``iogate serve`` is served and compares the
two.

Configured from the environment (uvicorn ``--factory`` takes no arguments):
``FLOOR_PG_URL`` and ``FLOOR_SQLITE_PATH`` name the two databases (each
optional), ``FLOOR_PG_POOL`` and ``FLOOR_SQLITE_POOL`` their pool sizes,
defaulting to iogate's own defaults (20 and 5).

The asyncpg pool is created with a no-op ``reset``: asyncpg otherwise spends a
round trip per release on ``RESET ALL; UNLISTEN *; ...``, which iogate skips
for connections whose state is known; a floor must not do work iogate avoids.
The SQLite side is ``FLOOR_SQLITE_POOL`` aiosqlite connections used round
robin (each runs its statements one at a time on its own thread).

Run: ``uvicorn bench.starlette_floor:create_app --factory --loop uvloop --http httptools``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def _no_reset(connection: asyncpg.Connection) -> None:
    """Keep the connection's session as is on release (see module docstring)."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app() -> Starlette:
    pg_url = os.environ.get("FLOOR_PG_URL")
    sqlite_path = os.environ.get("FLOOR_SQLITE_PATH")
    pg_pool_size = int(os.environ.get("FLOOR_PG_POOL", "20"))
    sqlite_pool_size = int(os.environ.get("FLOOR_SQLITE_POOL", "5"))
    pg: dict[str, asyncpg.Pool] = {}
    lite: dict[str, Callable[[], aiosqlite.Connection]] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        connections: list[aiosqlite.Connection] = []
        if pg_url:
            pg["pg"] = await asyncpg.create_pool(
                pg_url, min_size=1, max_size=pg_pool_size, reset=_no_reset
            )
        if sqlite_path:
            for _ in range(sqlite_pool_size):
                connections.append(await aiosqlite.connect(sqlite_path, isolation_level=None))
            turn: Iterator[aiosqlite.Connection] = itertools.cycle(connections)
            lite["sqlite"] = lambda: next(turn)
        try:
            yield
        finally:
            for connection in connections:
                await connection.close()
            for pool in pg.values():
                await pool.close()

    async def execute(request: Request) -> Response:
        body = orjson.loads(await request.body())
        name, query, params = body["db_name"], body["query"], body.get("params") or []
        if name in pg:
            async with pg[name].acquire() as conn:
                records = await conn.fetch(query, *params)
            rows = [dict(record) for record in records]
        elif name in lite:
            connection = lite[name]()
            cursor = await connection.execute(query, params)
            columns = [column[0] for column in cursor.description]
            rows = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
            await cursor.close()
        else:
            return _json({"success": False, "error": f"unknown database {name!r}"}, 404)
        return _json({"success": True, "data": rows})

    return Starlette(
        routes=[Route("/database/execute", execute, methods=["POST"])], lifespan=lifespan
    )
