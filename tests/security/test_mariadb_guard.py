"""Guarded SQL on MariaDB: every statement class a non-admin key may not run.

One ``iogate serve`` process for the module, databases ``maria`` and
``maria_ro`` (``read_only = true``) with one pooled connection each; see
harness.py for the invariant checked after every attack. ``SET GLOBAL``
appears only as a variable set to its own value: a guard that let it through
must not change a shared server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.security.harness import (
    Attack,
    first_of_each_class,
    params,
    per_class,
)
from tests.security.named_operations import NamedOperations, hostile_values
from tests.security.support import (
    ADMIN,
    READER,
    WRITER,
    keys_toml,
    new_prefix,
    serve,
    server_writable_dir,
)
from tests.security.target_mariadb import MariaDBTarget

pytestmark = pytest.mark.mysql

W = True  # a data write: refused for readers and on read_only databases only

ATTACKS = [
    # transaction control
    Attack("transaction", "begin", "BEGIN"),
    Attack("transaction", "begin-work", "BEGIN WORK"),
    Attack("transaction", "start", "START TRANSACTION"),
    Attack("transaction", "start-read-write", "START TRANSACTION READ WRITE"),
    Attack("transaction", "commit", "COMMIT"),
    Attack("transaction", "commit-and-chain", "COMMIT AND CHAIN"),
    Attack("transaction", "commit-work-no-release", "COMMIT WORK AND NO RELEASE"),
    Attack("transaction", "rollback", "ROLLBACK"),
    Attack("transaction", "rollback-and-chain", "ROLLBACK AND CHAIN"),
    Attack("transaction", "savepoint", "SAVEPOINT sp"),
    Attack("transaction", "release", "RELEASE SAVEPOINT sp"),
    Attack("transaction", "rollback-to", "ROLLBACK TO SAVEPOINT sp"),
    Attack("transaction", "xa-start", "XA START '{prefix}'"),
    Attack("transaction", "xa-end", "XA END '{prefix}'"),
    Attack("transaction", "xa-recover", "XA RECOVER"),
    # session settings
    Attack("session", "autocommit-off", "SET autocommit = 0", names="SET"),
    Attack("session", "select-limit", "SET SESSION sql_select_limit = 1"),
    Attack("session", "select-limit-short", "SET sql_select_limit = 1"),
    Attack("session", "statement-time", "SET @@session.max_statement_time = 0"),
    Attack("session", "statement-time-long", "SET max_statement_time = 1000"),
    Attack("session", "transaction-read-write", "SET SESSION TRANSACTION READ WRITE"),
    Attack("session", "next-transaction-read-write", "SET TRANSACTION READ WRITE"),
    Attack("session", "tx-read-only-off", "SET @@session.tx_read_only = 0"),
    Attack("session", "isolation", "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"),
    Attack("session", "sql-mode", "SET sql_mode = 'NO_BACKSLASH_ESCAPES'"),
    Attack("session", "ansi-quotes", "SET SESSION sql_mode = 'ANSI_QUOTES'"),
    Attack("session", "names", "SET NAMES latin1"),
    Attack("session", "character-set", "SET CHARACTER SET latin1"),
    Attack("session", "time-zone", "SET time_zone = '+05:00'"),
    Attack("session", "foreign-key-checks", "SET foreign_key_checks = 0"),
    Attack("session", "user-variable", "SET @evil = 1"),
    Attack("session", "user-variable-select", "SELECT @evil := 1"),
    Attack("session", "select-into-variable", "SELECT 1 INTO @evil"),
    Attack("session", "lock-wait-timeout", "SET lock_wait_timeout = 1"),
    Attack(
        "session",
        "global-to-itself",
        "SET GLOBAL max_statement_time = @@global.max_statement_time",
    ),
    Attack("session", "handler-open", "HANDLER {t} OPEN"),
    Attack("session", "show-variables", "SHOW VARIABLES"),
    # SET STATEMENT ... FOR
    Attack("set-statement", "timeout-select", "SET STATEMENT max_statement_time = 0 FOR SELECT 1"),
    Attack(
        "set-statement",
        "limit-select",
        "SET STATEMENT sql_select_limit = 1 FOR SELECT * FROM {t}",
    ),
    Attack(
        "set-statement",
        "read-write-insert",
        "SET STATEMENT tx_read_only = 0 FOR INSERT INTO {t} (id, name) VALUES (100, 'evil')",
    ),
    Attack(
        "set-statement",
        "fk-delete",
        "set statement foreign_key_checks = 0 for delete from {t}",
    ),
    # PREPARE / EXECUTE / DEALLOCATE
    Attack("prepare", "prepare-delete", "PREPARE s FROM 'DELETE FROM {t}'", names="PREPARE"),
    Attack("prepare", "execute", "EXECUTE s"),
    Attack("prepare", "deallocate", "DEALLOCATE PREPARE s"),
    Attack("prepare", "drop-prepare", "DROP PREPARE s"),
    Attack("prepare", "execute-immediate", "EXECUTE IMMEDIATE 'DELETE FROM {t}'"),
    Attack(
        "prepare", "execute-immediate-concat", "EXECUTE IMMEDIATE CONCAT('DELETE FROM ', '{t}')"
    ),
    # LOCK and user locks
    Attack("lock", "lock-tables-write", "LOCK TABLES {t} WRITE", names="LOCK"),
    Attack("lock", "lock-table-read", "LOCK TABLE {t} READ", names="LOCK"),
    Attack("lock", "unlock-tables", "UNLOCK TABLES"),
    Attack("lock", "get-lock", "SELECT GET_LOCK('{lockname}', 0)", names="get_lock"),
    Attack("lock", "get-lock-lower", "SELECT get_lock('{lockname}', 0) AS l", names="get_lock"),
    Attack("lock", "get-lock-in-where", "SELECT id FROM {t} WHERE GET_LOCK('{lockname}', 0)"),
    Attack("lock", "get-lock-in-subquery", "SELECT (SELECT GET_LOCK('{lockname}', 0)) AS l"),
    Attack("lock", "release-all", "SELECT RELEASE_ALL_LOCKS()"),
    Attack("lock", "release", "SELECT RELEASE_LOCK('{lockname}')"),
    # DO and CALL
    Attack("do-call", "do-get-lock", "DO GET_LOCK('{lockname}', 0)"),
    Attack("do-call", "do-expression", "DO 1 + 1"),
    Attack("do-call", "call", "CALL {prefix}_proc()", names="CALL"),
    Attack("do-call", "call-no-parens", "CALL {prefix}_proc"),
    Attack("do-call", "call-committing", "CALL {prefix}_tx()", names="CALL"),
    # DDL (MariaDB commits implicitly around DDL)
    Attack("ddl", "create-table", "CREATE TABLE {prefix}_new (id INT)"),
    Attack("ddl", "create-temporary", "CREATE TEMPORARY TABLE {t} (id INT, name TEXT, n INT)"),
    Attack("ddl", "create-temporary-select", "CREATE TEMPORARY TABLE {t} SELECT 1 AS id"),
    Attack("ddl", "create-select", "CREATE TABLE {prefix}_copy SELECT * FROM {t}"),
    Attack("ddl", "create-like", "CREATE TABLE {prefix}_like LIKE {t}"),
    Attack("ddl", "drop", "DROP TABLE {t}", names="DROP"),
    Attack("ddl", "drop-if-exists", "DROP TABLE IF EXISTS {t}", names="DROP"),
    Attack("ddl", "drop-temporary", "DROP TEMPORARY TABLE IF EXISTS {t}"),
    Attack("ddl", "truncate", "TRUNCATE TABLE {t}", names="TRUNCATE"),
    Attack("ddl", "alter-add-column", "ALTER TABLE {t} ADD COLUMN evil INT DEFAULT 1"),
    Attack("ddl", "rename", "RENAME TABLE {t} TO {prefix}_renamed"),
    Attack("ddl", "create-index", "CREATE INDEX {prefix}_idx ON {t} (n)"),
    Attack("ddl", "create-view", "CREATE VIEW {prefix}_view AS SELECT * FROM {t}"),
    Attack("ddl", "create-or-replace-view", "CREATE OR REPLACE VIEW {prefix}_v AS SELECT 1 AS x"),
    Attack("ddl", "create-procedure", "CREATE PROCEDURE {prefix}_p2() SELECT 1"),
    Attack(
        "ddl",
        "create-trigger",
        "CREATE TRIGGER {prefix}_trg BEFORE INSERT ON {t} FOR EACH ROW SET NEW.n = 0",
    ),
    Attack(
        "ddl",
        "create-event",
        "CREATE EVENT {prefix}_ev ON SCHEDULE EVERY 1 HOUR DO DELETE FROM {t}",
    ),
    Attack("ddl", "create-database", "CREATE DATABASE {prefix}_db"),
    Attack("ddl", "grant", "GRANT SELECT ON {t} TO PUBLIC"),
    # maintenance
    Attack("vacuum", "optimize", "OPTIMIZE TABLE {t}"),
    Attack("vacuum", "analyze", "ANALYZE TABLE {t}"),
    Attack("vacuum", "repair", "REPAIR TABLE {t}"),
    Attack("vacuum", "check", "CHECK TABLE {t}"),
    Attack("vacuum", "flush-table", "FLUSH TABLES {t}"),
    # files: INTO OUTFILE / DUMPFILE, LOAD DATA
    Attack("outfile", "into-outfile", "SELECT * FROM {t} INTO OUTFILE '{file}'"),
    Attack("outfile", "into-outfile-first", "SELECT * INTO OUTFILE '{file}' FROM {t}"),
    Attack("outfile", "into-dumpfile", "SELECT 'x' INTO DUMPFILE '{file}'"),
    Attack(
        "outfile",
        "outfile-fields",
        "SELECT id, name FROM {t} INTO OUTFILE '{file}' FIELDS TERMINATED BY ','",
    ),
    Attack("outfile", "union-outfile", "SELECT 1 UNION SELECT 2 INTO OUTFILE '{file}'"),
    Attack("outfile", "load-data", "LOAD DATA INFILE '{infile}' INTO TABLE {t}"),
    Attack("outfile", "load-data-local", "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE {t}"),
    # versioned comments (MariaDB executes their content)
    Attack("versioned-comment", "extra-column", "SELECT 1 /*! , 2 */"),
    Attack("versioned-comment", "versioned-delete", "/*!50000 DELETE FROM {t} */"),
    Attack("versioned-comment", "bare-delete", "/*!DELETE FROM {t}*/"),
    Attack("versioned-comment", "hidden-statement", "SELECT 1 /*!; DELETE FROM {t} */"),
    Attack("versioned-comment", "mariadb-only", "SELECT /*M!100000 1 , */ 2"),
    Attack("versioned-comment", "hidden-outfile", "SELECT 1 /*!50000 INTO OUTFILE '{file}' */"),
    Attack("versioned-comment", "hidden-function", "SELECT 1 /*!, LOAD_FILE('/etc/hostname') */"),
    Attack("versioned-comment", "future-version", "SELECT 1 /*!99999 , 2 */"),
    # several statements in one string
    Attack("stacked", "select-delete", "SELECT 1; DELETE FROM {t}"),
    Attack("stacked", "string-semicolon", "SELECT ';'; DELETE FROM {t}"),
    Attack("stacked", "hash-comment", "SELECT 1 #\n; DELETE FROM {t}"),
    Attack("stacked", "dash-comment", "SELECT 1 -- \n; DELETE FROM {t}"),
    Attack("stacked", "block-comment", "SELECT 1 /* ; */; DELETE FROM {t}"),
    Attack("stacked", "backslash-quote", "SELECT 'a\\'; DELETE FROM {t}; -- '"),
    Attack(
        "stacked",
        "commit-read-write-delete",
        "COMMIT; SET SESSION TRANSACTION READ WRITE; DELETE FROM {t}",
    ),
    Attack("stacked", "backtick", "SELECT 1 AS `a;b`; DELETE FROM {t}"),
    Attack("stacked", "two-selects", "SELECT 1; SELECT 2"),
    Attack("stacked", "select-set", "SELECT 1; SET autocommit = 0"),
    # functions with effects outside the transaction
    Attack("function", "load-file", "SELECT LOAD_FILE('/etc/hostname')", names="load_file"),
    Attack("function", "load-file-lower", "SELECT load_file('/etc/hostname') AS f"),
    Attack("function", "load-file-space", "SELECT LOAD_FILE ('/etc/hostname')"),
    Attack("function", "load-file-in-where", "SELECT id FROM {t} WHERE LOAD_FILE('/etc/hostname')"),
    Attack(
        "function",
        "load-file-in-insert",
        "INSERT INTO {t} (id, name) VALUES (98, LOAD_FILE('/etc/hostname'))",
    ),
    Attack("function", "load-file-in-update", "UPDATE {t} SET name = LOAD_FILE('/etc/hostname')"),
    Attack("function", "last-insert-id", "SELECT LAST_INSERT_ID(42)", names="last_insert_id"),
    Attack("function", "last-insert-id-column", "SELECT LAST_INSERT_ID(id) FROM {t}"),
    Attack("function", "gtid-wait", "SELECT MASTER_GTID_WAIT('0-1-1', 0.001)"),
    Attack(
        "function",
        "get-lock-in-insert",
        "INSERT INTO {t} (id, n) VALUES (97, GET_LOCK('{lockname}', 0))",
    ),
    Attack("system-table", "privilege-table", "SELECT user, password FROM mysql.user"),
    # the server and other sessions
    Attack("server", "kill-query", "KILL QUERY {victim_id}"),
    Attack("server", "kill", "KILL {victim_id}"),
    Attack("server", "show-processlist", "SHOW PROCESSLIST"),
    # data writes: a read key (or a read_only database) may not
    Attack("write", "insert", "INSERT INTO {t} (id, name, n) VALUES (100, 'evil', 0)", W),
    Attack(
        "write", "insert-select", "INSERT INTO {t} (id, name) SELECT id + 100, name FROM {t}", W
    ),
    Attack("write", "replace", "REPLACE INTO {t} (id, name) VALUES (1, 'evil')", W),
    Attack("write", "update", "UPDATE {t} SET n = n + 1", W),
    Attack("write", "delete", "DELETE FROM {t}", W),
    Attack("write", "delete-returning", "DELETE FROM {t} RETURNING id", W),
    Attack("write", "insert-returning", "INSERT INTO {t} (id) VALUES (101) RETURNING id", W),
    Attack(
        "write",
        "on-duplicate-key",
        "INSERT INTO {t} (id, name) VALUES (1, 'x') ON DUPLICATE KEY UPDATE name = 'evil'",
        W,
    ),
    Attack("write", "multi-table-delete", "DELETE a FROM {t} AS a JOIN {t} AS b ON a.id = b.id", W),
]  # fmt: skip

REFUSED_FOR_ALL = [a for a in ATTACKS if not a.writes]
WRITES = [a for a in ATTACKS if a.writes]
IN_BATCHES = per_class(REFUSED_FOR_ALL, 3)
ON_READ_ONLY = [*per_class(REFUSED_FOR_ALL, 3), *WRITES]

# Lookalikes a guard built on string matching would refuse: a parser lets them through.
ALLOWED_READS = [
    "SELECT 1 AS one",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "SELECT 'COMMIT; DROP TABLE x; SET autocommit = 0' AS text",
    "SELECT '/*!50000 DELETE FROM t */' AS text",
    "SELECT 1 AS `LOAD_FILE`, 2 AS `get_lock`",
    "SELECT name FROM {t} WHERE name = 'o''neil; --'",
    "SELECT COUNT(*) AS n FROM {t}",
]


@pytest.fixture(scope="module")
def maria(mysql_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBTarget]:
    target = MariaDBTarget(mysql_url, prefix=new_prefix(), files=server_writable_dir())
    try:
        target.setup()
        config = keys_toml(["db:maria:read", "db:maria_ro:read", "batch"]) + target.config()
        with serve(tmp_path_factory.mktemp("maria-guard"), config) as server:
            target.server = server
            target.capture_baselines()
            yield target
    finally:
        target.teardown()


def test_baseline_is_a_default_session(maria: MariaDBTarget) -> None:
    """What 'as it was handed out' means; every later probe must equal it."""
    writable, read_only = maria.baselines[maria.db], maria.baselines[maria.ro_db]
    for baseline in (writable, read_only):
        assert str(baseline["sql_select_limit"]) == "18446744073709551615"
        assert float(baseline["max_statement_time"]) == 5.0
        assert baseline["autocommit"] == 1
        assert baseline["foreign_key_checks"] == 1
    assert writable["tx_read_only"] == 0
    assert read_only["tx_read_only"] == 1


def test_the_invariant_can_fail(maria: MariaDBTarget) -> None:
    """The checks behind every test below see a changed row, a stray file
    and a changed session setting."""
    maria.assert_invariant_can_fail()


@pytest.mark.parametrize("attack", params(ATTACKS))
def test_reader_is_refused(maria: MariaDBTarget, attack: Attack) -> None:
    maria.direct(attack, key=READER, db=maria.db)


@pytest.mark.parametrize("attack", params(REFUSED_FOR_ALL))
def test_writer_is_refused(maria: MariaDBTarget, attack: Attack) -> None:
    maria.direct(attack, key=WRITER, db=maria.db)


@pytest.mark.parametrize("attack", params(ON_READ_ONLY))
def test_read_only_database_refuses_the_writer(maria: MariaDBTarget, attack: Attack) -> None:
    maria.direct(attack, key=WRITER, db=maria.ro_db)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_batch_refuses_the_operation(maria: MariaDBTarget, attack: Attack) -> None:
    maria.batch(attack, atomic=False)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_atomic_batch_is_rolled_back(maria: MariaDBTarget, attack: Attack) -> None:
    maria.batch(attack, atomic=True)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_transaction_step_is_rolled_back(maria: MariaDBTarget, attack: Attack) -> None:
    maria.transaction_step(attack)


@pytest.mark.parametrize("attack", params(WRITES))
def test_read_only_database_batch_refuses_writes(maria: MariaDBTarget, attack: Attack) -> None:
    maria.read_only_batch(attack)


@pytest.mark.parametrize("attack", params(first_of_each_class(ATTACKS)))
def test_reader_batch_needs_write_scope(maria: MariaDBTarget, attack: Attack) -> None:
    maria.reader_batch(attack)


@pytest.mark.parametrize("query", ALLOWED_READS)
def test_reader_may_run_data_reads(maria: MariaDBTarget, query: str) -> None:
    """The guard refuses by statement kind, not by the words in the text."""
    before = maria.snapshot()
    response = maria.gw.sql(maria.db, maria.render(query), key=READER)
    assert response.status_code == 200, response.text
    maria.check(before, maria.db)


def test_writer_may_run_data_writes(maria: MariaDBTarget) -> None:
    """Each data statement kind is allowed to the writer and committed."""
    a = maria.acks
    for sql in (
        f"INSERT INTO {a} (marker) VALUES ('w-insert')",
        f"UPDATE {a} SET marker = 'w-update' WHERE marker = 'w-insert'",
        f"REPLACE INTO {a} (id, marker) VALUES (1000000, 'w-replace')",
        f"DELETE FROM {a} WHERE marker = 'w-update'",
    ):
        response = maria.gw.sql(maria.db, sql, key=WRITER)
        assert response.status_code == 200, f"{sql}: {response.text}"
    assert maria.ack_count("w-replace") == 1
    assert maria.ack_count("w-update") == 0
    maria.check(maria.snapshot(), maria.db)


def test_admin_runs_sql_unguarded(maria: MariaDBTarget) -> None:
    before = maria.snapshot()
    response = maria.gw.sql(maria.db, "SHOW VARIABLES LIKE 'sql_mode'", key=ADMIN)
    assert response.status_code == 200, response.text
    maria.check(before, maria.db)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_find(maria: MariaDBTarget, value: str) -> None:
    NamedOperations(maria).find_matches_nothing(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_by_id(maria: MariaDBTarget, value: str) -> None:
    NamedOperations(maria).by_id_is_a_value(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_insert(maria: MariaDBTarget, value: str) -> None:
    NamedOperations(maria).note_stores_it_verbatim(value)


@pytest.mark.parametrize("atomic", [False, True], ids=["batch", "atomic-batch"])
@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_in_batch(maria: MariaDBTarget, value: str, atomic: bool) -> None:
    NamedOperations(maria).in_a_batch(value, atomic=atomic)


def test_named_operation_odd_parameters(maria: MariaDBTarget) -> None:
    NamedOperations(maria).odd_shapes()


def test_every_acknowledged_write_is_still_there(maria: MariaDBTarget) -> None:
    """Last in the module: every INSERT answered 200 above, read back raw."""
    maria.assert_acknowledged_writes_kept()
