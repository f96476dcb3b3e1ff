"""One Result shape on every SQL backend (issue 17; docs/guide.md, "Result shape").

PostgreSQL, SQLite and MariaDB run the same statements side by side and must
answer the same ``data``, ``rows_affected`` and ``last_insert_id``; the only
difference is that PostgreSQL has no insert id (``RETURNING`` gives it).
Real servers; one test drives a real ``iogate serve``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from iogate import AsyncPostgreSQLManager, AsyncSQLiteManager, DatabaseOptions
from iogate.backends.base import AsyncDatabaseManager
from iogate.backends.mysql import AsyncMySQLManager
from iogate.core.sqlguard import Access
from iogate.orchestrator import AsyncOperationOrchestrator
from tests.security.support import ADMIN, WRITER, GatewayProcess, keys_toml, serve

BACKENDS = ["postgresql", "sqlite", "mysql"]
ID_COLUMN = {
    "postgresql": "id serial PRIMARY KEY",
    # AUTOINCREMENT: ids are never reused, as with serial and AUTO_INCREMENT.
    "sqlite": "id INTEGER PRIMARY KEY AUTOINCREMENT",
    "mysql": "id INT AUTO_INCREMENT PRIMARY KEY",
}


@pytest.fixture(params=BACKENDS)
async def db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, AsyncDatabaseManager]]:
    backend: str = request.param
    options = DatabaseOptions(max_connections=2, acquire_timeout=5, statement_timeout=5)
    manager: AsyncDatabaseManager
    if backend == "postgresql":
        manager = AsyncPostgreSQLManager(request.getfixturevalue("postgres_url"), options=options)
    elif backend == "sqlite":
        manager = AsyncSQLiteManager(str(tmp_path / "shape.db"), options=options)
    else:
        manager = AsyncMySQLManager(request.getfixturevalue("mysql_url"), options=options)
    await manager.initialize_pool()
    try:
        yield backend, manager
    finally:
        await manager.close()


def shape(result: Any) -> tuple[Any, Any, Any]:
    assert result.success, result.error
    return result.data, result.rows_affected, result.last_insert_id


async def test_the_same_statements_answer_the_same_shape(
    db: tuple[str, AsyncDatabaseManager], table_name: str
) -> None:
    backend, manager = db
    t = table_name
    # PostgreSQL has no insert id: None there, the new row's id elsewhere.
    new_id = (lambda n: None) if backend == "postgresql" else (lambda n: n)
    run = manager.execute_query
    try:
        ddl = await run(f"CREATE TABLE {t} ({ID_COLUMN[backend]}, v VARCHAR(20))")
        assert shape(ddl) == ([], None, None)
        assert shape(await run(f"INSERT INTO {t} (v) VALUES ($1)", ["a"])) == ([], 1, new_id(1))
        # Several rows: no id (MariaDB would give the first, SQLite the last).
        assert shape(await run(f"INSERT INTO {t} (v) VALUES ('b'), ('c')")) == ([], 2, None)
        returning = await run(f"INSERT INTO {t} (v) VALUES ($1) RETURNING id", ["d"])
        assert shape(returning) == ([{"id": 4}], 1, None)
        # Matched rows, not changed ones: 'a' -> 'a' counts.
        assert shape(await run(f"UPDATE {t} SET v = 'a' WHERE v = 'a'")) == ([], 1, None)
        assert shape(await run(f"UPDATE {t} SET v = 'x' WHERE v = 'nope'")) == ([], 0, None)
        select = await run(f"SELECT id, v FROM {t} WHERE id <= $1 ORDER BY id", [2])
        assert shape(select) == ([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], None, None)
        deleted = await run(f"DELETE FROM {t} WHERE id >= $1 RETURNING id", [3])
        assert shape(deleted) == ([{"id": 3}, {"id": 4}], 2, None)
        assert shape(await run(f"DELETE FROM {t} WHERE id = 2")) == ([], 1, None)
        served = (await run(f"INSERT INTO {t} (v) VALUES ('e')")).to_dict()
        assert served["data"] == []
        assert served["last_insert_id"] == new_id(5)
    finally:
        assert shape(await run(f"DROP TABLE IF EXISTS {t}")) == ([], None, None)


async def test_transactions_answer_the_same_shape(
    db: tuple[str, AsyncDatabaseManager], table_name: str
) -> None:
    backend, manager = db
    t = table_name
    created = await manager.execute_query(f"CREATE TABLE {t} ({ID_COLUMN[backend]}, v TEXT)")
    assert created.success, created.error
    try:
        async with manager.transaction() as tx:
            one = await tx.execute_query(f"INSERT INTO {t} (v) VALUES ('a')")
            two = await tx.execute_query(f"INSERT INTO {t} (v) VALUES ('b') RETURNING id")
        assert shape(one) == ([], 1, None if backend == "postgresql" else 1)
        assert shape(two) == ([{"id": 2}], 1, None)
    finally:
        await manager.execute_query(f"DROP TABLE IF EXISTS {t}")


async def test_guarded_sqlite_reports_no_insert_id(sqlite_manager: AsyncSQLiteManager) -> None:
    """SQLite's insert id is the shared writer connection's: a guarded key never sees it."""
    created = await sqlite_manager.execute_query("CREATE TABLE g (id INTEGER PRIMARY KEY, v TEXT)")
    assert created.success, created.error
    trusted = await sqlite_manager.execute_query("INSERT INTO g (v) VALUES ('a')")
    assert shape(trusted) == ([], 1, 1)
    guarded = await sqlite_manager.execute_query(
        "INSERT INTO g (v) VALUES ('b')", guard=Access.WRITE
    )
    assert shape(guarded) == ([], 1, None)
    returning = await sqlite_manager.execute_query(
        "INSERT INTO g (v) VALUES ('c') RETURNING id", guard=Access.WRITE
    )
    assert shape(returning) == ([{"id": 3}], 1, None)


async def test_a_batch_step_refers_to_the_insert_id(tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("main", "sqlite", str(tmp_path / "refs.db"))
        step = {"type": "database", "db_name": "main"}
        results = await orchestrator.execute_batch_operations(
            [
                {**step, "query": "CREATE TABLE u (id INTEGER PRIMARY KEY, n TEXT)"},
                {**step, "query": "INSERT INTO u (n) VALUES ('ada')"},
                {
                    **step,
                    "query": "SELECT n FROM u WHERE id = $1",
                    "params": [{"$ref": "1.last_insert_id"}],
                },
            ]
        )
    assert [r.success for r in results] == [True, True, True], results
    assert results[2].data == [{"n": "ada"}]


# -- over HTTP -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    postgres_url: str, mysql_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("shape")
    config = f"""
[databases.postgresql]
type = "postgresql"
url = "{postgres_url}"

[databases.sqlite]
type = "sqlite"
path = "{workdir / "shape.db"}"

[databases.mysql]
type = "mysql"
url = "{mysql_url}"
""" + keys_toml(["db:sqlite:read"])
    with serve(workdir, config) as server:
        yield server


@pytest.mark.parametrize("key", [ADMIN, WRITER], ids=["trusted", "guarded"])
def test_http_answers_one_shape(gateway: GatewayProcess, key: str, table_name: str) -> None:
    http = gateway.gateway
    answers = {}
    for backend in BACKENDS:
        t = f"{table_name}_{backend[:2]}"
        steps = [
            f"CREATE TABLE {t} ({ID_COLUMN[backend]}, v VARCHAR(20))",
            f"INSERT INTO {t} (v) VALUES ('a')",
            f"INSERT INTO {t} (v) VALUES ('b') RETURNING id",
            f"UPDATE {t} SET v = 'b' WHERE id = 1",
            f"SELECT v FROM {t} ORDER BY id",
        ]
        try:
            bodies = []
            for query in steps:
                # DDL needs an admin key; the rest runs guarded for the writer.
                response = http.sql(backend, query, key=ADMIN if query is steps[0] else key)
                assert response.status_code == 200, f"{backend} {query}: {response.text}"
                bodies.append(response.json())
        finally:
            http.sql(backend, f"DROP TABLE IF EXISTS {t}", key=ADMIN)
        answers[backend] = [(b["data"], b["rows_affected"], b["last_insert_id"]) for b in bodies]
    expected = [
        ([], None, None),
        ([], 1, 1),
        ([{"id": 2}], 1, None),
        ([], 1, None),
        ([{"v": "b"}, {"v": "b"}], None, None),
    ]
    assert answers["mysql"] == expected
    # SQLite: the same, but no insert id for a guarded key (its value is the
    # shared writer connection's); PostgreSQL never has one.
    no_id = [expected[0], ([], 1, None), *expected[2:]]
    assert answers["sqlite"] == (expected if key == ADMIN else no_id)
    assert answers["postgresql"] == no_id
