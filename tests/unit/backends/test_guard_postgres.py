"""The PostgreSQL classifier: PostgreSQL's own parser (pglast), no I/O."""

from __future__ import annotations

import pytest

from iogate.backends.postgres.guard import classify_postgres
from iogate.core.errors import ForbiddenStatementError, QueryError
from iogate.core.sqlguard import Access, require

READS = [
    "SELECT 1",
    "select * from t where id = $1",
    "VALUES (1), (2)",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "TABLE t",
    "SELECT 1 -- ; DELETE FROM t",
    "SELECT ';DELETE FROM t' AS s",
    "SELECT $$;COMMIT$$ AS s",
    "SELECT pg_sleep(0)",
    "SELECT * FROM t FOR UPDATE",
    "SELECT pg_advisory_xact_lock(1)",  # released with the transaction
]
WRITES = [
    "INSERT INTO t VALUES (1)",
    "UPDATE t SET a = 1",
    "DELETE FROM t",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
]

REFUSED = {
    # stacked strings: one statement per operation
    "ROLLBACK; INSERT INTO t VALUES (2)": "multiple statements",
    "SELECT 1; SELECT 2": "multiple statements",
    "SELECT $$x$$; DELETE FROM t": "multiple statements",
    "COMMIT; DROP TABLE t": "multiple statements",
    # transaction control
    "COMMIT": "COMMIT",
    "END": "COMMIT",
    "ABORT": "ROLLBACK",
    "ROLLBACK": "ROLLBACK",
    "BEGIN": "BEGIN",
    "START TRANSACTION READ WRITE": "START",
    "SAVEPOINT a": "SAVEPOINT",
    "PREPARE TRANSACTION 'x'": "PREPARE TRANSACTION",
    # session state
    "SET statement_timeout = 0": "SET",
    "SET search_path = evil, public": "SET",
    "SET ROLE postgres": "SET",
    "SET SESSION AUTHORIZATION postgres": "SET",
    "SET default_transaction_read_only = off": "SET",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE": "SET",
    "RESET ALL": "SET",
    "DISCARD ALL": "DISCARD",
    "DEALLOCATE ALL": "DEALLOCATE",
    "PREPARE p AS SELECT 1": "PREPARE",
    "EXECUTE p": "EXECUTE",
    "LISTEN chan": "LISTEN",
    "NOTIFY chan": "NOTIFY",
    "LOCK TABLE t": "LOCK",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1": "DECLARE CURSOR",
    # DDL and other utilities
    "CREATE TEMP TABLE t (a int)": "CREATE TABLE",
    "CREATE TABLE t AS SELECT 1": "CREATE TABLE AS",
    "SELECT 1 AS a INTO new_table": "SELECT INTO",
    "DROP TABLE t": "DROP",
    "ALTER TABLE t ADD COLUMN b int": "ALTER TABLE",
    "TRUNCATE t": "TRUNCATE",
    "COPY t TO PROGRAM 'id'": "COPY",
    "COPY (SELECT 1) TO '/tmp/x'": "COPY",
    "DO $$BEGIN PERFORM 1; END$$": "DO",
    "CALL p()": "CALL",
    "EXPLAIN ANALYZE DELETE FROM t": "EXPLAIN",
    "VACUUM": "VACUUM",
    "GRANT ALL ON t TO public": "GRANT",
    "CREATE ROLE r SUPERUSER": "CREATE ROLE",
    "LOAD 'x'": "LOAD",
    "CHECKPOINT": "CHECKPOINT",
    # functions acting outside the transaction
    "SELECT lo_from_bytea(0, 'x')": "function lo_from_bytea",
    "SELECT lo_unlink(1)": "function lo_unlink",
    "SELECT * FROM lo_import('/etc/passwd')": "function lo_import",
    "SELECT pg_catalog.pg_read_file('/etc/passwd')": "function pg_catalog.pg_read_file",
    "SELECT pg_ls_dir('.')": "function pg_ls_dir",
    "SELECT pg_terminate_backend(1)": "function pg_terminate_backend",
    "SELECT set_config('search_path', 'x', false)": "function set_config",
    "SELECT pg_advisory_lock(1)": "function pg_advisory_lock",
    "SELECT 1 FROM t WHERE pg_try_advisory_lock(id) ": "function pg_try_advisory_lock",
    "WITH x AS (SELECT PG_RELOAD_CONF()) SELECT * FROM x": "function pg_reload_conf",
    "SELECT (SELECT dblink_exec('x', 'y'))": "function dblink_exec",
    "INSERT INTO t SELECT lo_creat(-1)": "function lo_creat",
}


@pytest.mark.parametrize("query", READS)
def test_reads_pass_a_reader(query: str) -> None:
    verdict = classify_postgres(query)
    assert verdict.refusal is None, verdict
    assert not verdict.writes, verdict
    require(verdict, Access.READ)


@pytest.mark.parametrize("query", WRITES)
def test_writes_pass_a_writer_only(query: str) -> None:
    verdict = classify_postgres(query)
    assert verdict.writes, verdict
    assert verdict.refusal is None, verdict
    require(verdict, Access.WRITE)
    with pytest.raises(ForbiddenStatementError, match="db:NAME:write"):
        require(verdict, Access.READ)


@pytest.mark.parametrize(("query", "kind"), REFUSED.items(), ids=list(REFUSED))
def test_refused_for_every_guarded_key(query: str, kind: str) -> None:
    verdict = classify_postgres(query)
    assert verdict.kind == kind
    for access in Access:
        with pytest.raises(ForbiddenStatementError) as caught:
            require(verdict, access)
        assert caught.value.kind == kind
        assert kind in str(caught.value)


@pytest.mark.parametrize("query", ["SELEC 1", "SELECT 'unterminated", "/* only */", ";"])
def test_unparsable_or_empty_text_is_a_query_error(query: str) -> None:
    with pytest.raises(QueryError) as caught:
        classify_postgres(query)
    assert not isinstance(caught.value, ForbiddenStatementError)


def test_verdicts_are_cached_by_text() -> None:
    query = "SELECT 42 AS cached_verdict"
    assert classify_postgres(query) is classify_postgres(query)
