"""The MariaDB/MySQL guard's classifier (sqlglot), without a server.

What MariaDB itself does with the same texts is in
tests/integration/mysql/test_mysql_guard.py.
"""

from __future__ import annotations

import pytest
import sqlglot
from sqlglot import exp
from sqlglot.dialects.mysql import MySQL

from iogate.backends.mysql import classify_guarded
from iogate.backends.mysql.guard import _Tokenizer, classify_mysql
from iogate.core.errors import ForbiddenStatementError
from iogate.core.sqlguard import FORBIDDEN_FUNCTIONS, Access, require


def placeholders(sql: str) -> tuple[int, ...]:
    """Where a ``?`` outside quotes is (for the simple texts of this module)."""
    positions, quote = [], ""
    for index, char in enumerate(sql):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`":
            quote = char
        elif char == "?":
            positions.append(index)
    return tuple(positions)


def classify(sql: str) -> tuple[str, bool, str | None]:
    verdict = classify_mysql(sql, placeholders(sql))
    return verdict.kind, verdict.writes, verdict.refusal


# -- data statements ----------------------------------------------------------------

READS = [
    ("SELECT 1", "SELECT"),
    ("SELECT 1;", "SELECT"),
    ("  SELECT a, b FROM t WHERE c = ? ORDER BY a LIMIT 10 ;  ", "SELECT"),
    ("SELECT * FROM t JOIN u ON t.id = u.t_id GROUP BY t.id HAVING COUNT(*) > 1", "SELECT"),
    ("WITH a AS (SELECT 1 AS x) SELECT * FROM a", "SELECT"),
    (
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 5)"
        " SELECT n FROM s",
        "SELECT",
    ),
    ("SELECT 1 UNION SELECT 2", "UNION"),
    ("(SELECT 1) UNION ALL (SELECT 2)", "UNION"),
    ("SELECT 1 INTERSECT SELECT 1", "INTERSECT"),
    ("SELECT 1 EXCEPT SELECT 2", "EXCEPT"),
    ("SELECT * FROM t FOR UPDATE", "SELECT"),
    ("SELECT * FROM t LOCK IN SHARE MODE", "SELECT"),
    ("SELECT 'a' 'b' AS stacked", "SELECT"),
    ('SELECT \'it\'\'s\', "say ""hi""", `odd``name` FROM t', "SELECT"),
    ("SELECT '/*!50000 not a comment */', '-- nor this', '# nor this'", "SELECT"),
    ("SELECT 1 - -1", "SELECT"),
    ("SELECT x'41', 0x41, b'01', N'n', _utf8mb4'u'", "SELECT"),
    ("SELECT @a, @@session.sql_mode, @@max_statement_time", "SELECT"),
    ("SELECT @a = 1", "SELECT"),  # a comparison, not an assignment
    ("SELECT * FROM information_schema.tables", "SELECT"),
    ("SELECT SLEEP(0), NOW(), JSON_EXTRACT('{\"a\": 1}', '$.a')", "SELECT"),
    ("SELECT name AS naïve FROM t", "SELECT"),
    ("SELECT '?' AS literal_question_mark", "SELECT"),
]


@pytest.mark.parametrize(("sql", "kind"), READS)
def test_reads_are_allowed_to_every_key(sql: str, kind: str) -> None:
    assert classify(sql) == (kind, False, None)
    verdict = classify_mysql(sql, placeholders(sql))
    require(verdict, Access.READ)
    require(verdict, Access.WRITE)


WRITES = [
    ("INSERT INTO t VALUES (1)", "INSERT"),
    ("INSERT INTO t (a, b) VALUES (?, ?), (?, ?)", "INSERT"),
    ("INSERT INTO t SET a = 1", "INSERT"),
    ("INSERT IGNORE INTO t VALUES (1)", "INSERT"),
    ("INSERT INTO t SELECT * FROM u", "INSERT"),
    ("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)", "INSERT"),
    ("INSERT INTO t (a) VALUES (1) RETURNING id", "INSERT"),
    ("REPLACE INTO t VALUES (1)", "REPLACE"),
    ("REPLACE t SET a = 1", "REPLACE"),
    ("REPLACE INTO t SELECT * FROM u", "REPLACE"),
    ("UPDATE t SET a = 1 WHERE id = ?", "UPDATE"),
    ("UPDATE t JOIN u ON t.id = u.id SET t.a = u.a", "UPDATE"),
    ("DELETE FROM t WHERE id = ?", "DELETE"),
    ("DELETE t FROM t JOIN u ON t.id = u.id", "DELETE"),
    ("WITH x AS (SELECT 1 AS id) DELETE FROM t WHERE id IN (SELECT id FROM x)", "DELETE"),
]


@pytest.mark.parametrize(("sql", "kind"), WRITES)
def test_writes_need_the_write_scope(sql: str, kind: str) -> None:
    assert classify(sql) == (kind, True, None)
    verdict = classify_mysql(sql, placeholders(sql))
    require(verdict, Access.WRITE)
    with pytest.raises(ForbiddenStatementError) as caught:
        require(verdict, Access.READ)
    assert caught.value.kind == kind


# -- refused statements ----------------------------------------------------------------

REFUSED = {
    "session settings": [
        ("SET SESSION max_statement_time = 0", "SET SESSION"),
        ("SET SESSION sql_select_limit = 1", "SET SESSION"),
        ("SET sql_select_limit = 1", "SET"),
        ("SET GLOBAL max_connections = 1", "SET GLOBAL"),
        ("SET @@session.autocommit = 0", "SET"),
        ("SET @@autocommit = 0", "SET"),
        ("set autocommit=0", "SET"),
        ("SET NAMES latin1", "SET NAMES"),
        ("SET CHARACTER SET latin1", "SET CHARACTER SET"),
        ("SET @a = 1", "SET"),
        ("SET STATEMENT tx_read_only = 0 FOR INSERT INTO t VALUES (1)", "SET STATEMENT"),
        ("SET STATEMENT max_statement_time = 0 FOR SELECT SLEEP(10)", "SET STATEMENT"),
        ("SET SESSION TRANSACTION READ WRITE", "SET SESSION TRANSACTION"),
        ("SET TRANSACTION READ WRITE", "SET TRANSACTION"),
        ("SET PASSWORD = PASSWORD('x')", "SET PASSWORD"),
        ("SET ROLE admin", "SET ROLE"),
    ],
    "transaction control": [
        ("START TRANSACTION", "START TRANSACTION"),
        ("START TRANSACTION READ WRITE", "START TRANSACTION"),
        ("BEGIN", "BEGIN"),
        ("BEGIN WORK", "BEGIN"),
        ("COMMIT", "COMMIT"),
        ("COMMIT AND CHAIN", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
        ("SAVEPOINT a", "SAVEPOINT"),
        ("RELEASE SAVEPOINT a", "RELEASE SAVEPOINT"),
        ("ROLLBACK TO SAVEPOINT a", "ROLLBACK"),
        ("XA START 'x'", "XA START"),
        ("XA COMMIT 'x'", "XA COMMIT"),
    ],
    "locks": [
        ("LOCK TABLES t WRITE", "LOCK TABLES"),
        ("LOCK TABLE t READ", "LOCK TABLE"),
        ("UNLOCK TABLES", "UNLOCK TABLES"),
        ("FLUSH TABLES WITH READ LOCK", "FLUSH"),
        ("BACKUP STAGE START", "BACKUP"),
    ],
    "DDL": [
        ("CREATE TABLE t2 (a INT)", "CREATE TABLE"),
        ("CREATE TEMPORARY TABLE t (a INT)", "CREATE TEMPORARY TABLE"),
        ("CREATE OR REPLACE TABLE t (a INT)", "CREATE OR REPLACE"),
        ("CREATE TABLE t2 AS SELECT * FROM t", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
        ("CREATE SEQUENCE s", "CREATE SEQUENCE"),
        ("CREATE FUNCTION f() RETURNS INT RETURN 1", "CREATE FUNCTION"),
        ("DROP TABLE t", "DROP TABLE"),
        ("DROP TEMPORARY TABLE t", "DROP TEMPORARY TABLE"),
        ("ALTER TABLE t ADD COLUMN b INT", "ALTER TABLE"),
        ("TRUNCATE TABLE t", "TRUNCATE TABLE"),
        ("TRUNCATE t", "TRUNCATE"),
        ("RENAME TABLE t TO t2", "RENAME TABLE"),
        ("OPTIMIZE TABLE t", "OPTIMIZE TABLE"),
        ("ANALYZE TABLE t", "ANALYZE TABLE"),
        ("GRANT ALL ON *.* TO 'x'@'%'", "GRANT"),
        ("CREATE USER x", "CREATE"),
    ],
    "procedures and server-side statements": [
        ("CALL p()", "CALL"),
        ("DO GET_LOCK('a', 0)", "DO"),
        ("DO 1", "DO"),
        ("HANDLER t OPEN", "HANDLER"),
        ("PREPARE s FROM 'SELECT 1'", "PREPARE"),
        ("EXECUTE s", "EXECUTE"),
        ("EXECUTE IMMEDIATE 'SET autocommit = 0'", "EXECUTE"),
        ("DEALLOCATE PREPARE s", "DEALLOCATE PREPARE"),
        ("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "LOAD DATA"),
        ("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t", "LOAD DATA"),
        ("LOAD XML INFILE '/x' INTO TABLE t", "LOAD XML"),
        ("KILL 1", "KILL"),
        ("USE mysql", "USE"),
        ("SHOW TABLES", "SHOW"),
        ("EXPLAIN SELECT 1", "EXPLAIN SELECT"),
        ("DESCRIBE t", "DESCRIBE"),
        ("SHUTDOWN", "SHUTDOWN"),
        ("INSTALL SONAME 'ha_connect'", "INSTALL"),
        ("BINLOG 'x'", "BINLOG"),
        ("SIGNAL SQLSTATE '45000'", "SIGNAL"),
        ("VALUES (1), (2)", "VALUES"),
    ],
    "into": [
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x' FIELDS TERMINATED BY ','", "INTO OUTFILE"),
        ("SELECT 1 INTO DUMPFILE '/tmp/x'", "INTO DUMPFILE"),
        ("SELECT 1 INTO @a", "INTO @variable"),
        ("SELECT 1, 2 INTO @a, @b", "INTO @variable"),
        ("SELECT * FROM t WHERE a IN (SELECT 1 INTO @x)", "INTO @variable"),
        ("INSERT INTO t SELECT 1 INTO @x", "INTO @variable"),
    ],
    "variable assignment": [
        ("SELECT @a := 1", "variable assignment"),
        ("SELECT * FROM t WHERE (@a := id) > 0", "variable assignment"),
        ("UPDATE t SET n = (@a := 5)", "variable assignment"),
        ("SELECT @@session.sql_select_limit := 1", "variable assignment"),
    ],
    "system schemas": [
        ("SELECT * FROM mysql.user", "system schema"),
        ("SELECT * FROM `mysql`.`global_priv`", "system schema"),
        ("SELECT * FROM t WHERE a IN (SELECT user FROM mysql.user)", "system schema"),
        ("INSERT INTO mysql.global_priv VALUES ('%', 'x', '{}')", "system schema"),
        ("UPDATE performance_schema.setup_consumers SET enabled = 'NO'", "system schema"),
        ("DELETE FROM sys.sys_config", "system schema"),
    ],
    "multiple statements": [
        ("SELECT 1; SELECT 2", "multiple statements"),
        ("SELECT 1;;", "multiple statements"),
        ("SELECT 1; SET autocommit = 0", "multiple statements"),
        ("INSERT INTO t VALUES (1); COMMIT", "multiple statements"),
        ("SELECT 1; CALL p()", "multiple statements"),
    ],
}


@pytest.mark.parametrize(
    ("sql", "kind"),
    [pytest.param(sql, kind, id=f"{group}: {sql}") for group, cases in REFUSED.items()
     for sql, kind in cases],
)  # fmt: skip
def test_everything_else_is_refused_for_every_key(sql: str, kind: str) -> None:
    verdict = classify_mysql(sql, placeholders(sql))
    assert verdict.kind == kind
    assert verdict.refusal
    for access in Access:
        with pytest.raises(ForbiddenStatementError) as caught:
            require(verdict, access)
        assert caught.value.kind == kind


@pytest.mark.parametrize("name", sorted(FORBIDDEN_FUNCTIONS["mysql"]))
@pytest.mark.parametrize(
    "template",
    [
        "SELECT {name}('x')",
        "SELECT {upper}('x')",
        "SELECT `{name}`('x')",
        "SELECT \"{name}\"('x')",  # a function call under sql_mode ANSI_QUOTES
        "SELECT {name} ('x')",
        "SELECT test.{name}('x')",
        "SELECT * FROM t WHERE a = {name}('x')",
        "INSERT INTO t VALUES ({name}('x'))",
        "UPDATE t SET a = {name}('x')",
        "SELECT start execute, {name}('x') FROM (SELECT 1 AS start) x",
    ],
)
def test_forbidden_functions_are_refused_wherever_they_are(name: str, template: str) -> None:
    sql = template.format(name=name, upper=name.upper())
    kind, _, refusal = classify(sql)
    assert kind == f"{name.upper()}()"
    assert refusal


# -- what MariaDB and sqlglot might read differently ------------------------------------------

LEXICAL = [
    # Comments: MariaDB executes /*! ... */ and /*M! ... */.
    ("/*!50000 SET autocommit = 0 */", "versioned comment"),
    ("/*!SET autocommit=0*/", "versioned comment"),
    ("/*M!100000 SET autocommit = 0 */", "versioned comment"),
    ("SELECT 1 /*!50000 , LOAD_FILE('/etc/hostname') */", "versioned comment"),
    ("SELECT 1 /*M!100000 INTO @a */", "versioned comment"),
    ("SELECT /*+ MAX_EXECUTION_TIME(1) */ 1", "comment"),
    # An optimizer hint is code to sqlglot, a comment to MariaDB 10.
    ("SELECT /*+ 'x */ LOAD_FILE('/etc/hostname') AS f -- ' */ 1", "comment"),
    ("INSERT /*+ x */ INTO t VALUES (1)", "comment"),
    ("SELECT 1 /* plain */", "comment"),
    ("SELECT 1 /* a /* b */ c */", "comment"),
    ("SELECT 1 -- x", "comment"),
    ("SELECT 1 --\tx", "comment"),
    ("SELECT 1 --", "comment"),
    ("SELECT 1 # x", "comment"),
    ("SELECT 1 AS a#b\n, 2", "comment"),
    ("SELECT 1 -- x\n, LOAD_FILE('/etc/hostname')", "comment"),
    # '--x' is two minus signs to both lexers: refused all the same.
    ("SELECT 2 --1", "comment"),
    ("SELECT 1 --x", "comment"),
    ("SELECT a--b FROM t", "comment"),
    # Backslashes: their meaning depends on sql_mode.
    ("SELECT 'a\\' , LOAD_FILE(0x2f6574632f686f73746e616d65) AS f -- '", "backslash"),
    ("SELECT 'it\\'s'", "backslash"),
    ('SELECT "a\\" , 1 AS b, "', "backslash"),
    ("SELECT \\N", "backslash"),
    # Characters one lexer may take for a separator and the other not.
    ("SELECT 1\x0bFROM t", "control character"),
    ("SELECT 1 --\x01x", "control character"),
    ("SELECT 1\x00", "control character"),
    ("SELECT\u2028 1", "whitespace"),
    ("SELECT\u00a01", "whitespace"),
    ("SELECT 1 --\u2028x", "comment"),
    ("SELECT a FROM t GROUP\u2028BY a", "unparseable"),
    # Tokens MariaDB cuts differently.
    ("SELECT 5.a", "unparseable"),
    ("SELECT 5.load_file('/etc/hostname')", "unparseable"),
    ("SELECT {x LOAD_FILE('/etc/hostname')}", "ODBC escape"),
    ("SELECT {d '2020-01-01'}", "ODBC escape"),
    ("SELECT 'unterminated", "unparseable"),
    ("SELECT 1 /*! unterminated", "unparseable"),
    # Nothing to run.
    ("", "empty"),
    ("  ;  ", "empty"),
]


@pytest.mark.parametrize(("sql", "kind"), LEXICAL)
def test_text_the_two_lexers_may_read_differently_is_refused(sql: str, kind: str) -> None:
    verdict = classify_mysql(sql, placeholders(sql))
    assert (verdict.kind, verdict.refusal is not None) == (kind, True)


def test_stock_sqlglot_would_miss_what_mariadb_runs() -> None:
    """Why the guard tokenizes with rules of its own: each text runs LOAD_FILE on
    MariaDB (tests/integration/mysql/test_mysql_guard.py), where stock sqlglot
    sees no call of it."""
    # Stock sqlglot makes one string token of everything after "start execute".
    command = "SELECT start execute, LOAD_FILE('/etc/hostname') FROM (SELECT 1 AS start) x"
    stock = [token.text for token in MySQL().tokenize(command)]
    assert "LOAD_FILE" not in stock
    assert "LOAD_FILE" in [token.text for token in _Tokenizer().tokenize(command)]
    assert classify_mysql(command).kind == "LOAD_FILE()"
    # A string under NO_BACKSLASH_ESCAPES ends at the backslash; a versioned
    # comment is code to MariaDB.
    for sql in (
        "SELECT 'a\\' , LOAD_FILE(0x2f6574632f686f73746e616d65) AS f -- '",
        "SELECT 1 /*!50000 , LOAD_FILE('/etc/hostname') */",
    ):
        tree = sqlglot.parse_one(sql, read="mysql")
        assert not [f for f in tree.find_all(exp.Anonymous) if f.name.lower() == "load_file"]
        assert classify_mysql(sql).refusal, sql


# -- placeholders -----------------------------------------------------------------------


def test_placeholders_must_be_where_sqlglot_sees_them() -> None:
    sql = "SELECT * FROM t WHERE a = ? AND b = ?"
    assert classify_mysql(sql, (26, 36)).refusal is None
    assert classify_mysql(sql, (26,)).kind == "placeholder"
    assert classify_mysql(sql, ()).kind == "placeholder"
    # A "?" the caller will fill but that sqlglot reads inside a literal.
    assert classify_mysql("SELECT 'a?b'", (9,)).kind == "placeholder"


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT"),
        ("SELECT * FROM t WHERE a = $1 AND b = $2 OR a = $1", "SELECT"),
        ("SELECT * FROM t WHERE a = %s", "SELECT"),
        ("SELECT '?', '%s', '$1', n % 2 FROM t WHERE a = ?", "SELECT"),
        ("INSERT INTO t (a, b) VALUES ($1, $2)", "INSERT"),
        ("UPDATE t SET a = %s WHERE name LIKE 'a%'", "UPDATE"),
    ],
)
def test_queries_are_classified_as_the_server_reads_them(query: str, kind: str) -> None:
    verdict = classify_guarded(query)
    assert verdict.kind == kind
    assert verdict.refusal is None


def test_classify_guarded_refuses_forbidden_statements_with_placeholders() -> None:
    assert classify_guarded("SET STATEMENT tx_read_only = ? FOR SELECT 1").kind == "SET STATEMENT"
    assert classify_guarded("SELECT LOAD_FILE(?)").kind == "LOAD_FILE()"
    assert classify_guarded("SELECT @a := $1").kind == "variable assignment"


# -- the cache ------------------------------------------------------------------------------


def test_verdicts_are_cached_by_text() -> None:
    sql = "SELECT 'cache probe 7c1e' AS x"
    assert classify_mysql(sql) is classify_mysql(sql)
    long_sql = "SELECT " + ", ".join(["1"] * 5000)
    assert classify_mysql(long_sql).kind == "SELECT"  # classified, not cached
