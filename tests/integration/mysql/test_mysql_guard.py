"""Guarded (untrusted) SQL against the real MariaDB server, never mocked.

For a read key and a write key: every attack of the reported incident and
more of each class is refused, and afterwards a trusted caller on the same
pooled connection (``max_connections=1``) finds the session as it was and a
guarded write still commits. Then what the guard lets through runs in the
transaction iogate opens and ends, a lost connection is answered with the
right status, and each place where sqlglot and MariaDB could read a text
differently is shown on the server and refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from asyncmy.connection import Connection

from iogate.backends.mysql import AsyncMySQLManager
from iogate.core.config import DatabaseOptions
from iogate.core.errors import UnknownOutcomeError
from iogate.core.sqlguard import Access
from tests.conftest import poll
from tests.integration.mysql.conftest import fetch

pytestmark = pytest.mark.mysql

SERVER_FILE = f"/tmp/iogate_guard_{uuid.uuid4().hex[:12]}"
DEFAULT_SELECT_LIMIT = 18446744073709551615

# {t}: the test's table (one seed row); {file}: a path on the server.
ATTACKS: dict[str, list[str]] = {
    "session settings": [
        "SET SESSION max_statement_time = 0",
        "SET SESSION sql_select_limit = 1",
        "SET sql_select_limit = 1",
        "SET @@session.sql_select_limit = 1",
        "SET @@sql_select_limit = 1",
        "SET @@session.autocommit = 0",
        "SET autocommit = 0",
        "SET NAMES latin1",
        "SET CHARACTER SET latin1",
        "SET @a = 1",
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'",
        "SET SESSION TRANSACTION READ WRITE",
        "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
        "SET STATEMENT tx_read_only = 0 FOR INSERT INTO {t} (name) VALUES ('set statement')",
        "SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(0)",
    ],
    "versioned comments": [
        "/*!50000 SET autocommit = 0 */",
        "/*!SET autocommit = 0*/",
        "/*!50000 SET SESSION sql_select_limit = 1 */",
        "/*M!100000 SET autocommit = 0 */",
        "/*M!100000 SET SESSION max_statement_time = 0 */",
        "SELECT 1 /*!50000 , LOAD_FILE('/etc/hostname') */",
        "SELECT 1 /*!50000 INTO @a */",
        "INSERT INTO {t} (name) VALUES ('a') /*!50000 , ('b') */",
        "SELECT /*+ 'x */ LOAD_FILE('/etc/hostname') AS f -- ' */ 1",
    ],
    "locks": [
        "LOCK TABLES {t} WRITE",
        "LOCK TABLE {t} READ",
        "UNLOCK TABLES",
        "SELECT GET_LOCK('iogate_guard', 0)",
        "SELECT get_lock('iogate_guard', 0) FROM {t}",
        "DO GET_LOCK('iogate_guard', 0)",
        "SELECT RELEASE_ALL_LOCKS()",
    ],
    "transaction control": [
        "START TRANSACTION",
        "START TRANSACTION READ WRITE",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "COMMIT AND CHAIN",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "XA START 'iogate_guard'",
        "XA END 'iogate_guard'",
    ],
    "DDL": [
        "CREATE TABLE {t}_new (a INT)",
        "CREATE TEMPORARY TABLE {t} (id INT)",
        "CREATE TEMPORARY TABLE {t} AS SELECT 1 AS id",
        "CREATE OR REPLACE TABLE {t} (a INT)",
        "CREATE VIEW {t}_v AS SELECT 1 AS a",
        "CREATE SEQUENCE {t}_s",
        "DROP TABLE {t}",
        "ALTER TABLE {t} ADD COLUMN extra INT",
        "TRUNCATE TABLE {t}",
        "TRUNCATE {t}",
        "RENAME TABLE {t} TO {t}_moved",
    ],
    "server-side statements": [
        "CALL iogate_no_such_procedure()",
        "DO SLEEP(0)",
        "HANDLER {t} OPEN",
        "PREPARE s FROM 'SET autocommit = 0'",
        "EXECUTE s",
        "EXECUTE IMMEDIATE 'SET autocommit = 0'",
        "DEALLOCATE PREPARE s",
        "LOAD DATA INFILE '/etc/hostname' INTO TABLE {t} (name)",
        "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {t} (name)",
        "USE mysql",
        "SHOW GRANTS",
        "KILL QUERY 999999999",
    ],
    "files": [
        "SELECT 1 INTO OUTFILE '{file}'",
        "SELECT * FROM {t} INTO OUTFILE '{file}'",
        "SELECT 1 INTO DUMPFILE '{file}'",
        "SELECT LOAD_FILE('/etc/hostname')",
        "SELECT `load_file`('/etc/hostname')",
        "SELECT load_file ('/etc/hostname')",
        "SELECT {{x LOAD_FILE('/etc/hostname')}}",
        "SELECT start execute, LOAD_FILE('/etc/hostname') FROM (SELECT 1 AS start) x",
        "INSERT INTO {t} (name) VALUES (LOAD_FILE('/etc/hostname'))",
    ],
    "user variables": [
        "SELECT @a := 1",
        "SELECT 1 INTO @a",
        "SELECT name FROM {t} WHERE (@a := n) IS NOT NULL",
        "UPDATE {t} SET n = (@a := 5)",
        "SELECT LAST_INSERT_ID(42)",
    ],
    "lexer tricks": [
        "SELECT 2 --1",
        "SELECT 1 --x",
        "SELECT 1 -- x\n, LOAD_FILE('/etc/hostname')",
        "SELECT 1 --\tx\n, LOAD_FILE('/etc/hostname')",
        "SELECT 1 #\n, LOAD_FILE('/etc/hostname')",
        "SELECT 1 AS a#b\n, LOAD_FILE('/etc/hostname')",
        "SELECT 'a\\' , LOAD_FILE(0x2f6574632f686f73746e616d65) AS f -- '",
        "SELECT 'a\\' 'b' , LOAD_FILE(0x2f6574632f686f73746e616d65) AS f -- '",
        "SELECT 5.a",
        "SELECT 1\x0bFROM dual",
        "SELECT\u00a01",
    ],
    "multiple statements": [
        "SELECT 1; SELECT 2",
        "SELECT 1; SET autocommit = 0",
        "INSERT INTO {t} (name) VALUES ('x'); COMMIT",
    ],
    "system schemas": [
        "SELECT user, password FROM mysql.user",
        "UPDATE performance_schema.setup_consumers SET enabled = 'NO' WHERE name = 'none'",
    ],
}


def attack_params() -> list[Any]:
    return [
        pytest.param(sql, id=f"{group}: {sql!r}") for group, sqls in ATTACKS.items() for sql in sqls
    ]


ACCESS = [pytest.param(Access.READ, id="read"), pytest.param(Access.WRITE, id="write")]


@pytest.fixture
async def guarded(
    mysql_url: str, my_raw: Connection, my_table: str
) -> AsyncIterator[AsyncMySQLManager]:
    """One pooled connection, so every call below shares one server session."""
    await fetch(my_raw, f"INSERT INTO {my_table} (name, n) VALUES ('seed', 1)")
    manager = AsyncMySQLManager(
        mysql_url,
        options=DatabaseOptions(max_connections=1, statement_timeout=5, acquire_timeout=5),
    )
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()


async def session_state(manager: AsyncMySQLManager, table: str) -> dict[str, Any]:
    """What a trusted caller of the pooled connection sees of its session."""
    result = await manager.execute_query(
        "SELECT CONNECTION_ID() AS connection, @@session.sql_select_limit AS sql_select_limit,"
        " @@session.max_statement_time AS max_statement_time, @@session.autocommit AS autocommit,"
        " @@session.tx_read_only AS tx_read_only, @@session.in_transaction AS in_transaction,"
        " @@session.tx_isolation AS isolation, @@session.sql_mode AS sql_mode,"
        " @@session.character_set_client AS charset, @a AS user_variable,"
        " IS_USED_LOCK('iogate_guard') AS named_lock,"
        f" (SELECT GROUP_CONCAT(name) FROM {table}) AS names_seen"
    )
    assert result.success, result.error
    state: dict[str, Any] = result.data[0]
    return state


def assert_defaults(state: dict[str, Any], names: str | None = "seed") -> None:
    assert state["sql_select_limit"] == DEFAULT_SELECT_LIMIT
    assert float(state["max_statement_time"]) == 5.0
    assert state["autocommit"] == 1
    assert state["tx_read_only"] == 0
    assert state["in_transaction"] == 0
    assert state["user_variable"] is None
    assert state["named_lock"] is None
    if names is not None:
        assert state["names_seen"] == names  # the real table, not a temporary one


async def assert_guarded_write_commits(
    manager: AsyncMySQLManager, raw: Connection, table: str, name: str
) -> None:
    insert = await manager.execute_query(
        f"INSERT INTO {table} (name, n) VALUES (?, 2)", [name], guard=Access.WRITE
    )
    assert insert.success, insert.error
    assert insert.rows_affected == 1
    # Seen at once from another session: committed, not left in a transaction.
    assert await fetch(raw, f"SELECT COUNT(*) FROM {table} WHERE name = %s", (name,)) == [(1,)]


# -- attacks ------------------------------------------------------------------------------


@pytest.mark.parametrize("access", ACCESS)
@pytest.mark.parametrize("attack", attack_params())
async def test_attack_is_refused_and_leaves_the_session_as_it_was(
    attack: str, access: Access, guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    before = await session_state(guarded, my_table)
    assert_defaults(before)
    result = await guarded.execute_query(attack.format(t=my_table, file=SERVER_FILE), guard=access)
    assert not result.success
    assert result.error_type == "forbidden_statement", result.error
    assert result.resource == guarded.name

    after = await session_state(guarded, my_table)
    assert after == before  # the same connection, and nothing in its session changed
    assert_defaults(after)
    assert await fetch(my_raw, f"SELECT id, name, n FROM {my_table}") == [(1, "seed", 1)]
    assert await fetch(my_raw, "SHOW TABLES LIKE %s", (f"{my_table}%",)) == [(my_table,)]
    assert await fetch(my_raw, "SELECT LOAD_FILE(%s) IS NULL", (SERVER_FILE,)) == [(1,)]
    await assert_guarded_write_commits(guarded, my_raw, my_table, "after attack")
    assert (await session_state(guarded, my_table))["connection"] == before["connection"]


async def test_the_session_check_sees_what_an_unguarded_statement_leaves(
    guarded: AsyncMySQLManager, my_table: str
) -> None:
    """The checks above would catch a leak: trusted SQL shows what one looks like."""
    before = await session_state(guarded, my_table)
    await guarded.execute_query("SET SESSION sql_select_limit = 1")  # trusted: runs
    after = await session_state(guarded, my_table)
    assert after["connection"] == before["connection"]
    assert after["sql_select_limit"] == 1
    await guarded.execute_query("SET SESSION sql_select_limit = DEFAULT")


@pytest.mark.parametrize(
    "write",
    [
        "INSERT INTO {t} (name) VALUES ('from a reader')",
        "INSERT INTO {t} (name) SELECT name FROM {t}",
        "REPLACE INTO {t} (id, name) VALUES (1, 'replaced')",
        "UPDATE {t} SET name = 'updated'",
        "DELETE FROM {t}",
        "WITH x AS (SELECT 1 AS id) DELETE FROM {t} WHERE id IN (SELECT id FROM x)",
    ],
)
async def test_a_read_key_cannot_write(
    write: str, guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    result = await guarded.execute_query(write.format(t=my_table), guard=Access.READ)
    assert result.error_type == "forbidden_statement"
    assert await fetch(my_raw, f"SELECT id, name FROM {my_table}") == [(1, "seed")]
    assert_defaults(await session_state(guarded, my_table))


# -- what runs, and how ---------------------------------------------------------------------


async def test_guarded_statements_run_in_a_transaction_iogate_opens(
    guarded: AsyncMySQLManager, my_table: str
) -> None:
    probe = "SELECT @@tx_read_only AS read_only, @@in_transaction AS in_transaction"
    read = await guarded.execute_query(probe, guard=Access.READ)
    assert read.data == [{"read_only": 1, "in_transaction": 1}]
    write = await guarded.execute_query(probe, guard=Access.WRITE)
    assert write.data == [{"read_only": 0, "in_transaction": 1}]
    assert (await guarded.execute_query(probe)).data == [{"read_only": 0, "in_transaction": 0}]
    assert_defaults(await session_state(guarded, my_table))


async def test_reads_return_data_and_stacked_strings_stay_data(
    guarded: AsyncMySQLManager, my_table: str
) -> None:
    rows = await guarded.execute_query(
        f"SELECT id, name FROM {my_table} WHERE n = $1", [1], guard=Access.READ
    )
    assert rows.data == [{"id": 1, "name": "seed"}]
    stacked = await guarded.execute_query(
        "SELECT 'x' '/*!50000 , LOAD_FILE(''/etc/hostname'') */' ' -- ' AS s", guard=Access.READ
    )
    assert stacked.data == [{"s": "x/*!50000 , LOAD_FILE('/etc/hostname') */ -- "}]
    # Row locks are a write to MariaDB: refused in a READ ONLY transaction.
    lock = f"SELECT name FROM {my_table} FOR UPDATE"
    assert (await guarded.execute_query(lock, guard=Access.READ)).error_type == "read_only"
    assert (await guarded.execute_query(lock, guard=Access.WRITE)).data == [{"name": "seed"}]
    capped = await guarded.execute_query(
        "SELECT seq FROM seq_1_to_10", guard=Access.READ, max_rows=3
    )
    assert capped.truncated
    assert len(capped.data) == 3


async def test_the_server_enforces_read_only_too(
    guarded: AsyncMySQLManager, my_raw: Connection, table_name: str
) -> None:
    """A read the classifier lets through that writes all the same (a
    sequence) is stopped by the READ ONLY transaction."""
    sequence = f"{table_name}_seq"
    await fetch(my_raw, f"CREATE SEQUENCE {sequence}")
    try:
        read = await guarded.execute_query(f"SELECT NEXTVAL({sequence}) AS v", guard=Access.READ)
        assert read.error_type == "read_only"
        write = await guarded.execute_query(f"SELECT NEXTVAL({sequence}) AS v", guard=Access.WRITE)
        assert write.data == [{"v": 1}]
    finally:
        await fetch(my_raw, f"DROP SEQUENCE {sequence}")


@pytest.mark.parametrize(
    ("query", "params"),
    [
        ("INSERT INTO {t} (name, n) VALUES (?, ?)", ["qmark", 7]),
        ("INSERT INTO {t} (name, n) VALUES ($1, $2)", {"1": "dollar", "2": 7}),
        ("INSERT INTO {t} (name, n) VALUES (%s, %s)", ["pyformat", 7]),
        ("INSERT INTO {t} SET name = 'literal', n = 7", None),
        ("REPLACE INTO {t} (id, name, n) VALUES (5, 'replace', 7)", None),
    ],
)
async def test_a_guarded_write_is_committed(
    query: str, params: Any, guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    result = await guarded.execute_query(query.format(t=my_table), params, guard=Access.WRITE)
    assert result.success, result.error
    assert result.rows_affected == 1
    assert result.data == []
    assert result.last_insert_id is not None
    assert result.last_insert_id > 1
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table} WHERE n = 7") == [(1,)]
    assert_defaults(await session_state(guarded, my_table), names=None)


async def test_updates_and_deletes_commit(
    guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    update = await guarded.execute_query(
        f"UPDATE {my_table} SET n = n + 1 WHERE name = ?", ["seed"], guard=Access.WRITE
    )
    assert update.rows_affected == 1
    assert await fetch(my_raw, f"SELECT n FROM {my_table}") == [(2,)]
    delete = await guarded.execute_query(f"DELETE FROM {my_table}", guard=Access.WRITE)
    assert delete.rows_affected == 1
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_a_failed_write_leaves_nothing_and_a_clean_connection(
    guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    before = await session_state(guarded, my_table)
    duplicate = await guarded.execute_query(
        f"INSERT INTO {my_table} (id, name) VALUES (2, 'first'), (1, 'duplicate')",
        guard=Access.WRITE,
    )
    assert duplicate.error_type == "query_error"
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(1,)]
    assert await session_state(guarded, my_table) == before


async def test_a_write_on_a_read_only_database_is_refused_by_the_server(
    mysql_url: str, my_raw: Connection, my_table: str
) -> None:
    manager = AsyncMySQLManager(mysql_url, options=DatabaseOptions(read_only=True))
    async with manager:
        result = await manager.execute_query(
            f"INSERT INTO {my_table} (name) VALUES ('x')", guard=Access.WRITE
        )
    assert result.error_type == "read_only"
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_a_server_timeout_rolls_the_write_back(
    mysql_url: str, my_raw: Connection, my_table: str
) -> None:
    manager = AsyncMySQLManager(
        mysql_url, options=DatabaseOptions(max_connections=1, statement_timeout=0.3)
    )
    async with manager:
        slow = await manager.execute_query(
            f"INSERT INTO {my_table} (name, n) SELECT 'slow', SLEEP(2)", guard=Access.WRITE
        )
        assert slow.error_type == "timeout"
        state = await manager.execute_query("SELECT @@in_transaction AS t, @@tx_read_only AS r")
        assert state.data == [{"t": 0, "r": 0}]
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(0,)]


async def test_multiple_statements_fail_even_unguarded(guarded: AsyncMySQLManager) -> None:
    """Multi-statements are off in the protocol: not a matter of the guard."""
    for query in ("SELECT 1; SELECT 2", "SELECT 1; SET autocommit = 0"):
        result = await guarded.execute_query(query)
        assert result.error_type == "query_error", query
    state = await guarded.execute_query("SELECT @@autocommit AS a")
    assert state.data == [{"a": 1}]


# -- guarded transactions ---------------------------------------------------------------


async def test_a_guarded_write_transaction_commits(
    guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    async with guarded.transaction(guard=Access.WRITE) as tx:
        first = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES (?)", ["a"])
        second = await tx.execute_query(f"UPDATE {my_table} SET n = 9 WHERE name = 'a'")
        assert first.success, first.error
        assert second.success, second.error
    assert tx.status == "committed"
    assert await fetch(my_raw, f"SELECT n FROM {my_table} WHERE name = 'a'") == [(9,)]
    assert_defaults(await session_state(guarded, my_table), names="seed,a")


@pytest.mark.parametrize("access", ACCESS)
@pytest.mark.parametrize(
    "attack",
    [
        "COMMIT",
        "SET autocommit = 0",
        "/*!50000 COMMIT */",
        "SET STATEMENT tx_read_only = 0 FOR INSERT INTO {t} (name) VALUES ('x')",
        "CREATE TEMPORARY TABLE {t} (id INT)",
        "LOCK TABLES {t} WRITE",
        "SELECT 1; COMMIT",
    ],
)
async def test_an_attack_inside_a_guarded_transaction_rolls_it_back(
    attack: str, access: Access, guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    before = await session_state(guarded, my_table)
    async with guarded.transaction(guard=access) as tx:
        if access is Access.WRITE:
            ok = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES ('in tx')")
            assert ok.success, ok.error
        refused = await tx.execute_query(attack.format(t=my_table))
        assert refused.error_type == "forbidden_statement"
    assert tx.status == "rolled_back"
    assert await fetch(my_raw, f"SELECT name FROM {my_table}") == [("seed",)]
    assert await session_state(guarded, my_table) == before


async def test_a_guarded_read_transaction_reads_and_cannot_write(
    guarded: AsyncMySQLManager, my_raw: Connection, my_table: str
) -> None:
    async with guarded.transaction(guard=Access.READ) as tx:
        read = await tx.execute_query(f"SELECT name FROM {my_table}")
        assert read.data == [{"name": "seed"}]
    assert tx.status == "committed"  # nothing to commit: it ended with ROLLBACK
    async with guarded.transaction(guard=Access.READ) as tx:
        write = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES ('x')")
        assert write.error_type == "forbidden_statement"
    assert tx.status == "rolled_back"
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(1,)]
    assert_defaults(await session_state(guarded, my_table))


# -- where sqlglot and MariaDB could disagree, shown on the server ------------------------------


@pytest.mark.parametrize(
    ("sql_mode", "text"),
    [
        # A string ends at the backslash under NO_BACKSLASH_ESCAPES; sqlglot
        # reads one string literal.
        ("NO_BACKSLASH_ESCAPES", "SELECT 'a\\' , 42 AS hidden -- '"),
        # Versioned comments and optimizer hints are code or comments.
        (None, "SELECT 1 /*!50000 , 42 AS hidden */"),
        (None, "SELECT 1 /*M!100000 , 42 AS hidden */"),
        (None, "SELECT /*+ 'x */ 42 AS hidden -- ' */ 1"),
        # MariaDB evaluates the expression of an ODBC escape.
        (None, "SELECT {x 42} AS hidden"),
        # '--' followed by a tab starts a comment; '#' ends a word.
        (None, "SELECT 1 --\tx\n, 42 AS hidden"),
        (None, "SELECT 1 AS a#b\n, 42 AS hidden"),
    ],
)
async def test_hidden_code_mariadb_runs_is_refused(
    sql_mode: str | None, text: str, my_raw: Connection, guarded: AsyncMySQLManager
) -> None:
    if sql_mode is not None:
        await fetch(my_raw, f"SET SESSION sql_mode = CONCAT(@@sql_mode, ',{sql_mode}')")
    cursor = my_raw.cursor()
    await cursor.execute(text)
    columns = [column[0] for column in cursor.description]
    await cursor.close()
    assert "hidden" in columns  # MariaDB ran what a second reader could miss
    for access in Access:
        result = await guarded.execute_query(text, guard=access)
        assert result.error_type == "forbidden_statement", (access, result.error)


async def test_words_stock_sqlglot_reads_as_a_command_are_read_as_mariadb_does(
    my_raw: Connection, guarded: AsyncMySQLManager
) -> None:
    """Stock sqlglot makes one string of everything after "start execute";
    the guard's tokenizer does not, so it sees (and checks) what MariaDB runs."""
    text = "SELECT start execute, 42 AS hidden FROM (SELECT 1 AS start) x"
    assert await fetch(my_raw, text) == [(1, 42)]
    result = await guarded.execute_query(text, guard=Access.READ)
    assert result.data == [{"execute": 1, "hidden": 42}]
    hidden_call = text.replace("42", "LOAD_FILE('/etc/hostname')")
    refused = await guarded.execute_query(hidden_call, guard=Access.READ)
    assert refused.error_type == "forbidden_statement"


async def test_quoted_function_names_are_calls_to_mariadb(my_raw: Connection) -> None:
    """Why the guard refuses `load_file`(...) and, for ANSI_QUOTES, "load_file"(...)."""
    assert await fetch(my_raw, "SELECT `concat`('a', 'b')") == [("ab",)]
    await fetch(my_raw, "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')")
    assert await fetch(my_raw, "SELECT \"concat\"('a', 'b')") == [("ab",)]


async def test_dash_dash_without_a_space_is_arithmetic_to_mariadb(
    my_raw: Connection, guarded: AsyncMySQLManager
) -> None:
    assert await fetch(my_raw, "SELECT 2 --1") == [(3,)]
    assert await fetch(my_raw, "SELECT 2 -- 1") == [(2,)]
    for text in ("SELECT 2 --1", "SELECT 2 -- 1"):
        result = await guarded.execute_query(text, guard=Access.READ)
        assert result.error_type == "forbidden_statement"
    spaced = await guarded.execute_query("SELECT 2 - -1 AS v", guard=Access.READ)
    assert spaced.data == [{"v": 3}]


# -- a lost connection -----------------------------------------------------------------------


class CuttingProxy:
    """A TCP relay to the server that loses the connection at a chosen statement.

    ``arm(marker, when)`` picks the first statement sent (COM_QUERY or
    COM_STMT_PREPARE) containing ``marker``. ``"before"``: the connection is cut
    instead of forwarding it. ``"after"``: it is forwarded, the server's answer
    is awaited and dropped, and the connection cut.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.fired = asyncio.Event()
        self._marker: bytes | None = None
        self._when = "before"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()  # every relay then sees its end and finishes
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def arm(self, marker: bytes, when: str) -> None:
        self._marker, self._when = marker, when

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        downstream = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            await self._upstream(reader, up_reader, up_writer, downstream)
        except OSError:
            pass
        finally:
            writer.transport.abort()
            up_writer.transport.abort()
            downstream.cancel()
            await asyncio.gather(downstream, return_exceptions=True)

    async def _upstream(
        self,
        reader: asyncio.StreamReader,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        downstream: asyncio.Task[None],
    ) -> None:
        buffer = b""
        while data := await reader.read(65536):
            buffer += data
            while len(buffer) >= 4:
                size = int.from_bytes(buffer[:3], "little")
                if len(buffer) < 4 + size:
                    break
                packet, buffer = buffer[: 4 + size], buffer[4 + size :]
                if self._fires(packet[4:]):
                    self.fired.set()
                    if self._when == "after":
                        downstream.cancel()
                        await asyncio.gather(downstream, return_exceptions=True)
                        up_writer.write(packet)
                        await up_writer.drain()
                        await up_reader.read(65536)  # the answer, never passed on
                    return
                up_writer.write(packet)
                await up_writer.drain()

    def _fires(self, payload: bytes) -> bool:
        return (
            self._marker is not None
            and not self.fired.is_set()
            and payload[:1] in (b"\x03", b"\x16")  # COM_QUERY, COM_STMT_PREPARE
            and self._marker in payload
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


@pytest.fixture
async def proxied(mysql_url: str) -> AsyncIterator[tuple[CuttingProxy, AsyncMySQLManager]]:
    parts = urlsplit(mysql_url)
    proxy = CuttingProxy(parts.hostname or "127.0.0.1", parts.port or 3306)
    await proxy.start()
    manager = AsyncMySQLManager(
        proxy.url(mysql_url),
        options=DatabaseOptions(max_connections=1, statement_timeout=5, acquire_timeout=5),
    )
    await manager.initialize_pool()
    try:
        yield proxy, manager
    finally:
        await manager.close()
        await proxy.close()


async def still_serves(manager: AsyncMySQLManager) -> bool:
    assert await poll(lambda: manager.pool_stats()["in_use"] == 0)
    return (await manager.execute_query("SELECT 1 AS one")).data == [{"one": 1}]


@pytest.mark.parametrize(
    ("marker", "when", "error_type", "written"),
    [
        # Nothing can have been committed: the server rolls back the open
        # transaction of a connection that goes away.
        (b"INSERT", "before", "connection_error", False),
        (b"INSERT", "after", "connection_error", False),
        # COMMIT was sent: applied or not, the client cannot know.
        (b"COMMIT", "before", "unknown_outcome", False),
        (b"COMMIT", "after", "unknown_outcome", True),
    ],
)
async def test_a_lost_guarded_write_is_answered_by_what_may_have_happened(
    marker: bytes,
    when: str,
    error_type: str,
    written: bool,
    proxied: tuple[CuttingProxy, AsyncMySQLManager],
    my_raw: Connection,
    my_table: str,
) -> None:
    proxy, manager = proxied
    proxy.arm(marker, when)
    result = await manager.execute_query(
        f"INSERT INTO {my_table} (name) VALUES ('lost')", guard=Access.WRITE
    )
    assert proxy.fired.is_set()
    assert result.error_type == error_type, result.error
    expected = [(1,)] if written else [(0,)]
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == expected
    assert await still_serves(manager)


async def test_a_lost_read_is_a_connection_error(
    proxied: tuple[CuttingProxy, AsyncMySQLManager], my_table: str
) -> None:
    proxy, manager = proxied
    proxy.arm(my_table.encode(), "after")
    result = await manager.execute_query(f"SELECT * FROM {my_table}", guard=Access.READ)
    assert result.error_type == "connection_error"
    assert await still_serves(manager)


async def test_a_read_whose_rollback_is_lost_still_answers(
    proxied: tuple[CuttingProxy, AsyncMySQLManager],
) -> None:
    proxy, manager = proxied
    proxy.arm(b"ROLLBACK", "before")
    result = await manager.execute_query("SELECT 7 AS v", guard=Access.READ)
    assert proxy.fired.is_set()
    assert result.data == [{"v": 7}]  # nothing to undo: the server rolls back anyway
    assert await still_serves(manager)


@pytest.mark.parametrize(
    ("statement", "error_type", "written"),
    [
        ("INSERT INTO {t} (name) VALUES ('autocommit')", "unknown_outcome", True),
        ("SELECT * FROM {t}", "connection_error", False),
    ],
)
async def test_a_lost_trusted_statement_is_answered_by_what_it_may_have_done(
    statement: str,
    error_type: str,
    written: bool,
    proxied: tuple[CuttingProxy, AsyncMySQLManager],
    my_raw: Connection,
    my_table: str,
) -> None:
    proxy, manager = proxied
    proxy.arm(my_table.encode(), "after")
    result = await manager.execute_query(statement.format(t=my_table))
    assert result.error_type == error_type, result.error
    expected = [(1,)] if written else [(0,)]
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == expected


async def test_a_lost_commit_of_a_guarded_transaction_is_an_unknown_outcome(
    proxied: tuple[CuttingProxy, AsyncMySQLManager], my_raw: Connection, my_table: str
) -> None:
    proxy, manager = proxied
    proxy.arm(b"COMMIT", "after")
    with pytest.raises(UnknownOutcomeError):
        async with manager.transaction(guard=Access.WRITE) as tx:
            inserted = await tx.execute_query(f"INSERT INTO {my_table} (name) VALUES ('tx')")
            assert inserted.success, inserted.error
    assert await fetch(my_raw, f"SELECT COUNT(*) FROM {my_table}") == [(1,)]
    assert await still_serves(manager)
