"""Guarded SQL on PostgreSQL: every statement class a non-admin key may not run.

One ``iogate serve`` process for the module, databases ``pg`` and ``pg_ro``
(``read_only = true``) with one pooled connection each; see harness.py for
the invariant checked after every attack.
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
from tests.security.target_postgres import PostgresTarget

pytestmark = pytest.mark.postgres

W = True  # a data write: refused for readers and on read_only databases only

ATTACKS = [
    # transaction control
    Attack("transaction", "begin", "BEGIN"),
    Attack("transaction", "begin-read-write", "BEGIN READ WRITE"),
    Attack("transaction", "start-read-write", "START TRANSACTION READ WRITE"),
    Attack("transaction", "commit", "COMMIT"),
    Attack("transaction", "commit-and-chain", "COMMIT AND CHAIN"),
    Attack("transaction", "rollback", "ROLLBACK"),
    Attack("transaction", "end", "END"),
    Attack("transaction", "abort", "ABORT"),
    Attack("transaction", "savepoint", "SAVEPOINT {prefix}_sp"),
    Attack("transaction", "release", "RELEASE SAVEPOINT {prefix}_sp"),
    Attack("transaction", "rollback-to", "ROLLBACK TO SAVEPOINT {prefix}_sp"),
    Attack("transaction", "prepare-transaction", "PREPARE TRANSACTION '{prefix}_gid'"),
    Attack("transaction", "commit-prepared", "COMMIT PREPARED '{prefix}_gid'"),
    # session settings
    Attack("session", "statement-timeout", "SET statement_timeout = 0", names="SET"),
    Attack("session", "session-statement-timeout", "SET SESSION statement_timeout TO '1ms'"),
    Attack("session", "local-statement-timeout", "SET LOCAL statement_timeout = 0"),
    Attack("session", "search-path-temp", "SET search_path TO pg_temp, public"),
    Attack("session", "search-path-schema", "SET search_path = {prefix}_evil, public"),
    Attack("session", "role", "SET ROLE pg_read_all_data"),
    Attack("session", "session-authorization", "SET SESSION AUTHORIZATION pg_read_all_data"),
    Attack("session", "reset-all", "RESET ALL"),
    Attack("session", "reset-one", "RESET statement_timeout"),
    Attack(
        "session",
        "characteristics-read-write",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ),
    Attack("session", "default-read-only-off", "SET default_transaction_read_only = off"),
    Attack("session", "transaction-read-only-off", "SET transaction_read_only = off"),
    Attack("session", "transaction-read-write", "SET TRANSACTION READ WRITE"),
    Attack("session", "replication-role", "SET session_replication_role = replica"),
    Attack(
        "session",
        "set-config",
        "SELECT set_config('statement_timeout', '1', false)",
        names="set_config",
    ),
    Attack(
        "session",
        "set-config-local",
        "SELECT set_config('search_path', 'pg_temp', true)",
        names="set_config",
    ),
    Attack(
        "session",
        "set-config-in-subquery",
        "SELECT * FROM (SELECT set_config('search_path', 'pg_temp', false) AS s) AS q",
        names="set_config",
    ),
    Attack(
        "session",
        "set-config-qualified",
        "SELECT pg_catalog.set_config('statement_timeout', '1', false)",
        names="set_config",
    ),
    Attack("session", "discard-all", "DISCARD ALL"),
    Attack("session", "discard-temp", "DISCARD TEMP"),
    Attack("session", "show", "SHOW search_path"),
    Attack("session", "load-library", "LOAD 'auto_explain'"),
    # PREPARE / EXECUTE / DEALLOCATE, cursors
    Attack("prepare", "prepare-delete", "PREPARE {prefix}_p AS DELETE FROM {t}", names="PREPARE"),
    Attack("prepare", "prepare-select", "PREPARE {prefix}_q AS SELECT 1"),
    Attack("prepare", "execute", "EXECUTE {prefix}_p"),
    Attack("prepare", "deallocate-all", "DEALLOCATE ALL"),
    Attack("prepare", "deallocate-one", "DEALLOCATE {prefix}_p"),
    Attack(
        "prepare",
        "declare-with-hold",
        "DECLARE {prefix}_c CURSOR WITH HOLD FOR SELECT * FROM {t}",
    ),
    Attack("prepare", "fetch", "FETCH ALL FROM {prefix}_c"),
    Attack("prepare", "close-all", "CLOSE ALL"),
    # LISTEN / NOTIFY
    Attack("listen", "listen", "LISTEN {prefix}_ch", names="LISTEN"),
    Attack("listen", "unlisten", "UNLISTEN *"),
    Attack("listen", "notify", "NOTIFY {prefix}_ch, 'x'", names="NOTIFY"),
    Attack("listen", "pg-notify", "SELECT pg_notify('{prefix}_ch', 'x')", names="pg_notify"),
    # LOCK and advisory locks
    Attack("lock", "access-exclusive", "LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE", names="LOCK"),
    Attack("lock", "share", "LOCK {t} IN SHARE MODE", names="LOCK"),
    Attack("lock", "advisory", "SELECT pg_advisory_lock({lock})", names="pg_advisory_lock"),
    Attack("lock", "advisory-try", "SELECT pg_try_advisory_lock({lock})"),
    Attack("lock", "advisory-shared", "SELECT pg_advisory_lock_shared({lock})"),
    Attack("lock", "advisory-unlock-all", "SELECT pg_advisory_unlock_all()"),
    Attack("lock", "advisory-in-where", "SELECT id FROM {t} WHERE pg_try_advisory_lock({lock})"),
    Attack("lock", "advisory-two-keys", "SELECT pg_advisory_lock(0, {lock})"),
    # COPY
    Attack("copy", "to-stdout", "COPY {t} TO STDOUT", names="COPY"),
    Attack("copy", "from-stdin", "COPY {t} FROM STDIN", names="COPY"),
    Attack("copy", "to-file", "COPY {t} TO '{file}'", names="COPY"),
    Attack("copy", "query-to-file", "COPY (SELECT * FROM {t}) TO '{file}'", names="COPY"),
    Attack("copy", "to-program", "COPY {t} TO PROGRAM 'touch {file}'", names="COPY"),
    Attack(
        "copy",
        "from-program",
        "COPY {t} (id, name, n) FROM PROGRAM 'echo 999,evil,9' WITH (FORMAT csv)",
        names="COPY",
    ),
    Attack("copy", "from-file", "COPY {t} (name) FROM '/etc/hostname'", names="COPY"),
    # DO and CALL
    Attack("do-call", "do-delete", "DO $$ BEGIN DELETE FROM {t}; END $$"),
    Attack(
        "do-call",
        "do-set-config",
        "DO $$ BEGIN PERFORM set_config('statement_timeout', '1', false); END $$",
    ),
    Attack(
        "do-call",
        "do-language",
        "DO LANGUAGE plpgsql $do$ BEGIN CREATE TABLE {prefix}_do (id int); END $do$",
    ),
    Attack("do-call", "call", "CALL {prefix}_proc()", names="CALL"),
    Attack("do-call", "call-committing", "CALL {prefix}_tx()", names="CALL"),
    # DDL
    Attack("ddl", "create-table", "CREATE TABLE {prefix}_new (id int)"),
    Attack("ddl", "create-temp-table", "CREATE TEMP TABLE {t} (id int, name text, n int)"),
    Attack("ddl", "create-temp-as", "CREATE TEMPORARY TABLE {t} AS SELECT 1 AS id"),
    Attack("ddl", "create-temp-view", "CREATE TEMP VIEW {t} AS SELECT 1 AS id"),
    Attack("ddl", "select-into", "SELECT * INTO {prefix}_copy FROM {t}"),
    Attack("ddl", "select-into-temp", "SELECT * INTO TEMP {t} FROM {t}"),
    Attack("ddl", "create-table-as", "CREATE TABLE {prefix}_as AS SELECT * FROM {t}"),
    Attack("ddl", "create-unlogged", "CREATE UNLOGGED TABLE {prefix}_u (id int)"),
    Attack("ddl", "drop", "DROP TABLE {t}", names="DROP"),
    Attack("ddl", "drop-cascade", "DROP TABLE IF EXISTS {t} CASCADE", names="DROP"),
    Attack("ddl", "truncate", "TRUNCATE {t}", names="TRUNCATE"),
    Attack("ddl", "alter-add-column", "ALTER TABLE {t} ADD COLUMN evil int DEFAULT 1"),
    Attack("ddl", "alter-rename", "ALTER TABLE {t} RENAME TO {prefix}_renamed"),
    Attack("ddl", "create-index", "CREATE INDEX {prefix}_idx ON {t} (n)"),
    Attack("ddl", "create-view", "CREATE VIEW {prefix}_view AS SELECT * FROM {t}"),
    Attack(
        "ddl",
        "create-function",
        "CREATE FUNCTION {prefix}_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    ),
    Attack("ddl", "create-schema", "CREATE SCHEMA {prefix}_evil"),
    Attack("ddl", "comment", "COMMENT ON TABLE {t} IS 'owned'"),
    Attack("ddl", "grant", "GRANT ALL ON {t} TO PUBLIC"),
    Attack("ddl", "create-rule", "CREATE RULE {prefix}_r AS ON INSERT TO {t} DO INSTEAD NOTHING"),
    Attack("ddl", "explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM {t}"),
    Attack("ddl", "explain", "EXPLAIN SELECT * FROM {t}"),
    # VACUUM and maintenance
    Attack("vacuum", "vacuum", "VACUUM {t}", names="VACUUM"),
    Attack("vacuum", "vacuum-full", "VACUUM FULL {t}", names="VACUUM"),
    Attack("vacuum", "analyze", "ANALYZE {t}"),
    Attack("vacuum", "reindex", "REINDEX TABLE {t}"),
    Attack("vacuum", "checkpoint", "CHECKPOINT"),
    # several statements in one string
    Attack("stacked", "select-delete", "SELECT 1; DELETE FROM {t}"),
    Attack(
        "stacked",
        "commit-read-write-delete",
        "SELECT 1; COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; "
        "DELETE FROM {t}",
    ),
    Attack("stacked", "rollback-delete", "ROLLBACK; DELETE FROM {t}"),
    Attack("stacked", "commit-begin-delete", "COMMIT; BEGIN READ WRITE; DELETE FROM {t}"),
    Attack("stacked", "string-semicolon", "SELECT ';'; DELETE FROM {t}"),
    Attack("stacked", "dollar-semicolon", "SELECT $$;$$; DELETE FROM {t}"),
    Attack("stacked", "escape-string", "SELECT E'\\';'; DELETE FROM {t}"),
    Attack("stacked", "line-comment", "SELECT 1 -- x\n; DELETE FROM {t}"),
    Attack("stacked", "block-comment", "SELECT 1 /* ; */; DELETE FROM {t}"),
    Attack("stacked", "nested-comment", "SELECT 1 /* /* */ ; */; DELETE FROM {t}"),
    Attack("stacked", "quoted-identifier", 'SELECT 1 AS "a;b"; DELETE FROM {t}'),
    Attack("stacked", "two-selects", "SELECT 1; SELECT 2"),
    Attack("stacked", "select-set", "SELECT 1; SET statement_timeout = 0"),
    # One statement after an empty one: PostgreSQL runs a plain DELETE.
    Attack("stacked", "leading-semicolon", "; DELETE FROM {t}", W),
    Attack("stacked", "newlines", "SELECT 1;\n\nDELETE FROM {t};"),
    # functions with effects outside the transaction
    Attack("function", "lo-creat", "SELECT lo_creat(-1)", names="lo_creat"),
    Attack("function", "lo-create", "SELECT lo_create({oid})", names="lo_create"),
    Attack("function", "lo-from-bytea", "SELECT lo_from_bytea({oid}, 'x')", names="lo_from_bytea"),
    Attack("function", "lo-import", "SELECT lo_import('/etc/hostname', {oid})", names="lo_import"),
    Attack("function", "lo-export", "SELECT lo_export({victim_oid}, '{file}')", names="lo_export"),
    Attack("function", "lo-unlink", "SELECT lo_unlink({victim_oid})", names="lo_unlink"),
    Attack("function", "lo-put", "SELECT lo_put({victim_oid}, 0, 'x')", names="lo_put"),
    Attack("function", "lo-qualified", "SELECT pg_catalog.lo_creat(-1)", names="lo_creat"),
    Attack("function", "lo-quoted", 'SELECT "lo_creat"(-1)', names="lo_creat"),
    Attack("function", "lo-upper-case", "SELECT LO_CREAT(-1)", names="lo_creat"),
    Attack("function", "lo-in-cte", "WITH x AS (SELECT lo_creat(-1) AS o) SELECT o FROM x"),
    Attack("function", "lo-in-subquery", "SELECT (SELECT lo_creat(-1))"),
    Attack("function", "lo-in-where", "SELECT id FROM {t} WHERE lo_creat(-1) > 0"),
    Attack("function", "lo-in-values", "VALUES (lo_creat(-1))"),
    Attack("function", "lo-in-order-by", "SELECT id FROM {t} ORDER BY lo_creat(-1)"),
    Attack("function", "lo-in-lateral", "SELECT * FROM {t}, LATERAL (SELECT lo_creat(-1)) AS l"),
    Attack("function", "lo-in-insert", "INSERT INTO {t} (id, name) SELECT 99, lo_creat(-1)::text"),
    Attack("function", "read-file", "SELECT pg_read_file('/etc/hostname')", names="pg_read_file"),
    Attack("function", "read-binary-file", "SELECT pg_read_binary_file('/etc/hostname')"),
    Attack("function", "ls-dir", "SELECT pg_ls_dir('.')", names="pg_ls_dir"),
    Attack("function", "ls-dir-from", "SELECT * FROM pg_ls_dir('.') AS f", names="pg_ls_dir"),
    Attack("function", "stat-file", "SELECT pg_stat_file('/etc/hostname')"),
    Attack(
        "function",
        "terminate-backend",
        "SELECT pg_terminate_backend({victim_pid})",
        names="pg_terminate_backend",
    ),
    Attack("function", "terminate-self", "SELECT pg_terminate_backend(pg_backend_pid())"),
    Attack("function", "cancel-backend", "SELECT pg_cancel_backend({victim_pid})"),
    Attack("function", "reload-conf", "SELECT pg_reload_conf()"),
    Attack(
        "function",
        "dblink",
        "SELECT * FROM dblink('dbname=test', 'DELETE FROM {t}') AS r(x text)",
        names="dblink",
    ),
    Attack("function", "dblink-exec", "SELECT dblink_exec('dbname=test', 'DELETE FROM {t}')"),
    Attack(
        "function",
        "read-file-in-insert",
        "INSERT INTO {t} (id, name) VALUES (98, pg_read_file('/etc/hostname'))",
    ),
    Attack(
        "function", "read-file-in-update", "UPDATE {t} SET name = pg_read_file('/etc/hostname')"
    ),
    # data writes: a read key (or a read_only database) may not
    Attack("write", "insert", "INSERT INTO {t} (id, name, n) VALUES (100, 'evil', 0)", W),
    Attack("write", "insert-returning", "INSERT INTO {t} (id) VALUES (101) RETURNING id", W),
    Attack("write", "update", "UPDATE {t} SET n = n + 1", W),
    Attack("write", "delete", "DELETE FROM {t}", W),
    Attack("write", "delete-returning", "DELETE FROM {t} RETURNING id", W),
    Attack(
        "write",
        "merge",
        "MERGE INTO {t} AS d USING (SELECT 1 AS id) AS s ON d.id = s.id WHEN MATCHED THEN DELETE",
        W,
    ),
    Attack(
        "write",
        "cte-delete",
        "WITH gone AS (DELETE FROM {t} RETURNING id) SELECT count(*) FROM gone",
        W,
    ),
    Attack(
        "write",
        "cte-insert",
        "WITH x AS (INSERT INTO {t} (id) VALUES (102) RETURNING id) SELECT id FROM x",
        W,
    ),
    Attack(
        "write",
        "upsert",
        "INSERT INTO {t} (id, name) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = 'evil'",
        W,
    ),
    Attack("write", "select-for-update", "SELECT * FROM {t} FOR UPDATE", W),
    Attack("write", "comment-then-delete", "/* SELECT */ DELETE FROM {t}", W),
]  # fmt: skip

REFUSED_FOR_ALL = [a for a in ATTACKS if not a.writes]
WRITES = [a for a in ATTACKS if a.writes]
IN_BATCHES = per_class(REFUSED_FOR_ALL, 3)
ON_READ_ONLY = [*per_class(REFUSED_FOR_ALL, 3), *WRITES]

# Lookalikes a guard built on string matching would refuse: a parser lets them through.
ALLOWED_READS = [
    "SELECT 1 AS one",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "VALUES (1, 'a')",
    "SELECT 'COMMIT; DROP TABLE x; SET ROLE y' AS text",
    "SELECT $$; DELETE FROM t; $$ AS text",
    "/* BEGIN; */ SELECT 1 AS one -- ; ROLLBACK",
    'SELECT 1 AS "lo_creat", 2 AS "set_config"',
    "SELECT name FROM {t} WHERE name = 'o''neil; --'",
    "SELECT count(*) AS n FROM {t}",
]


@pytest.fixture(scope="module")
def pg(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresTarget]:
    target = PostgresTarget(postgres_url, prefix=new_prefix(), files=server_writable_dir())
    try:
        target.setup()
        config = keys_toml(["db:pg:read", "db:pg_ro:read", "batch"]) + target.config()
        with serve(tmp_path_factory.mktemp("pg-guard"), config) as server:
            target.server = server
            target.capture_baselines()
            yield target
    finally:
        target.teardown()


def test_baseline_is_a_default_session(pg: PostgresTarget) -> None:
    """What 'as it was handed out' means; every later probe must equal it."""
    writable, read_only = pg.baselines[pg.db], pg.baselines[pg.ro_db]
    for baseline in (writable, read_only):
        assert baseline["statement_timeout"] == "5s"
        assert baseline["search_path"] == '"$user", public'
        assert baseline["role"] == "none"
        assert baseline["current_user_name"] == pg.role
        assert baseline["session_user_name"] == pg.role
        assert baseline["default_transaction_read_only"] == "off"
        assert baseline["session_replication_role"] == "origin"
        assert baseline["temp_relations"] == 0
        assert baseline["prepared_statements"] == 0
        assert baseline["holdable_cursors"] == 0
        assert baseline["listening"] == 0
        assert baseline["advisory_locks"] == 0
    assert writable["transaction_read_only"] == "off"
    assert read_only["transaction_read_only"] == "on"


def test_the_invariant_can_fail(pg: PostgresTarget) -> None:
    """The checks behind every test below see a changed row, a stray file
    and a changed session setting."""
    pg.assert_invariant_can_fail()


@pytest.mark.parametrize("attack", params(ATTACKS))
def test_reader_is_refused(pg: PostgresTarget, attack: Attack) -> None:
    pg.direct(attack, key=READER, db=pg.db)


@pytest.mark.parametrize("attack", params(REFUSED_FOR_ALL))
def test_writer_is_refused(pg: PostgresTarget, attack: Attack) -> None:
    pg.direct(attack, key=WRITER, db=pg.db)


@pytest.mark.parametrize("attack", params(ON_READ_ONLY))
def test_read_only_database_refuses_the_writer(pg: PostgresTarget, attack: Attack) -> None:
    pg.direct(attack, key=WRITER, db=pg.ro_db)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_batch_refuses_the_operation(pg: PostgresTarget, attack: Attack) -> None:
    pg.batch(attack, atomic=False)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_atomic_batch_is_rolled_back(pg: PostgresTarget, attack: Attack) -> None:
    pg.batch(attack, atomic=True)


@pytest.mark.parametrize("attack", params(IN_BATCHES))
def test_transaction_step_is_rolled_back(pg: PostgresTarget, attack: Attack) -> None:
    pg.transaction_step(attack)


@pytest.mark.parametrize("attack", params(WRITES))
def test_read_only_database_batch_refuses_writes(pg: PostgresTarget, attack: Attack) -> None:
    pg.read_only_batch(attack)


@pytest.mark.parametrize("attack", params(first_of_each_class(ATTACKS)))
def test_reader_batch_needs_write_scope(pg: PostgresTarget, attack: Attack) -> None:
    pg.reader_batch(attack)


@pytest.mark.parametrize("query", ALLOWED_READS)
def test_reader_may_run_data_reads(pg: PostgresTarget, query: str) -> None:
    """The guard refuses by statement kind, not by the words in the text."""
    before = pg.snapshot()
    response = pg.gw.sql(pg.db, pg.render(query), key=READER)
    assert response.status_code == 200, response.text
    pg.check(before, pg.db)


def test_writer_may_run_data_writes(pg: PostgresTarget) -> None:
    """Each data statement kind is allowed to the writer and committed."""
    a = pg.acks
    for sql in (
        f"INSERT INTO {a} (marker) VALUES ('w-insert')",
        f"UPDATE {a} SET marker = 'w-update' WHERE marker = 'w-insert'",
        f"MERGE INTO {a} AS d USING (SELECT 'w-merge' AS m) AS s ON d.marker = s.m "
        "WHEN NOT MATCHED THEN INSERT (marker) VALUES (s.m)",
        f"WITH x AS (INSERT INTO {a} (marker) VALUES ('w-cte') RETURNING marker) SELECT * FROM x",
        f"DELETE FROM {a} WHERE marker = 'w-update'",
    ):
        response = pg.gw.sql(pg.db, sql, key=WRITER)
        assert response.status_code == 200, f"{sql}: {response.text}"
    assert pg.ack_count("w-merge") == 1
    assert pg.ack_count("w-cte") == 1
    assert pg.ack_count("w-update") == 0
    pg.check(pg.snapshot(), pg.db)


def test_admin_runs_sql_unguarded(pg: PostgresTarget) -> None:
    """The admin key is trusted: a session setting is not refused (the pool
    still hands the next caller a clean session)."""
    before = pg.snapshot()
    response = pg.gw.sql(pg.db, "SHOW search_path", key=ADMIN)
    assert response.status_code == 200, response.text
    pg.check(before, pg.db)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_find(pg: PostgresTarget, value: str) -> None:
    NamedOperations(pg).find_matches_nothing(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_by_id(pg: PostgresTarget, value: str) -> None:
    NamedOperations(pg).by_id_is_a_value(value)


@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_insert(pg: PostgresTarget, value: str) -> None:
    NamedOperations(pg).note_stores_it_verbatim(value)


@pytest.mark.parametrize("atomic", [False, True], ids=["batch", "atomic-batch"])
@pytest.mark.parametrize("value", hostile_values())
def test_named_operation_in_batch(pg: PostgresTarget, value: str, atomic: bool) -> None:
    NamedOperations(pg).in_a_batch(value, atomic=atomic)


def test_named_operation_odd_parameters(pg: PostgresTarget) -> None:
    NamedOperations(pg).odd_shapes()


def test_every_acknowledged_write_is_still_there(pg: PostgresTarget) -> None:
    """Last in the module: every INSERT answered 200 above, read back raw."""
    pg.assert_acknowledged_writes_kept()
