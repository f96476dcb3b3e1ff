"""Guarded SQL on SQLite: the connection's own authorizer decides.

SQLite calls an authorizer (``sqlite3.Connection.set_authorizer``) for every
action of a statement while it compiles it: each table read, each table
written, each function called, each PRAGMA, ATTACH, transaction or schema
change. That is SQLite's own reading of the statement, so no comment, quoting
or keyword trick hides anything from it. :func:`classify` maps one action to
a :class:`~iogate.core.sqlguard.Verdict`; :class:`ConnectionGuard` allows a
statement only if every one of its actions is on the positive list
(``SELECT``, reads, recursive CTEs, functions not in
``FORBIDDEN_FUNCTIONS["sqlite"]``, and for ``Access.WRITE`` also
``INSERT``/``UPDATE``/``DELETE`` of tables not named ``sqlite_*``) and
remembers the most telling refused action, so the error names the statement
kind. A statement SQLite reports no action for at all (``REINDEX`` with no
index, ``VACUUM``) is not a data statement either: it is refused after the
fact, inside the transaction iogate opens, which is then rolled back (see
:meth:`ConnectionGuard.ran`). One statement per operation: Python's sqlite3
compiles only the first statement of a text and refuses to run a text with
another one after it (``ProgrammingError``), so a second statement is never
even compiled.

Why guarded texts carry a marker. The authorizer runs only when a statement
is compiled, and Python's sqlite3 keeps up to ``cached_statements`` compiled
statements per connection, keyed by their exact text. A statement compiled
for trusted code (or for a write key) and then replayed by a read key would
run without ever being checked. Calling ``set_authorizer`` again expires every
compiled statement, but that is all or nothing: the connection's own
``BEGIN``/``ROLLBACK`` and every trusted query would be recompiled each time
a connection switched between trusted and guarded work, that is on every
guarded call. Instead :func:`guarded_text` prefixes each guarded statement
with a comment naming its access level and a random per-process value.
SQLite ignores the comment, but the statement cache does not: a marked text
is only ever run, hence only ever compiled (including SQLite's automatic
recompile after a schema change), while its connection's guard enforces that
level, and no trusted or other-level text can share its cache entry. The
authorizer is installed once per connection, when the connection first runs
a guarded statement; a connection that never does has none and pays nothing.

Eponymous virtual tables (``json_each``, ``dbstat``...) declare themselves
to the connection on first use, and that declaration reaches the authorizer
as an ``UPDATE`` of ``sqlite_master``, which is refused. The guard therefore
declares them in trusted mode when it is installed, so ``SELECT ... FROM
json_each(?)`` behaves the same on every connection.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3

from iogate.core.errors import ForbiddenStatementError, QueryError
from iogate.core.sqlguard import Access, Verdict, forbidden_function, refused, require

__all__ = [
    "ConnectionGuard",
    "GuardableConnection",
    "classify",
    "connection_guard",
    "guarded_text",
]

_ALLOW = sqlite3.SQLITE_OK
_DENY = sqlite3.SQLITE_DENY

_DATA_WRITES: dict[int, str] = {
    sqlite3.SQLITE_INSERT: "INSERT",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE",
}
_INTERNAL_WRITES: dict[int, str] = {
    sqlite3.SQLITE_INSERT: "INSERT INTO",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE FROM",
}
# Steps on SQLite's own tables that a CREATE, DROP or ANALYZE takes first.
_INTERNAL_STEPS = frozenset(
    {
        sqlite3.SQLITE_INSERT,
        sqlite3.SQLITE_UPDATE,
        sqlite3.SQLITE_DELETE,
        sqlite3.SQLITE_CREATE_TABLE,
    }
)
# Actions that name a whole statement: they outrank what such a statement
# does on the way (ANALYZE creates sqlite_stat1, VACUUM opens a transaction).
_STATEMENTS: dict[int, str] = {
    sqlite3.SQLITE_PRAGMA: "PRAGMA",
    sqlite3.SQLITE_ATTACH: "ATTACH",
    sqlite3.SQLITE_DETACH: "DETACH",
    sqlite3.SQLITE_ALTER_TABLE: "ALTER TABLE",
    sqlite3.SQLITE_ANALYZE: "ANALYZE",
    sqlite3.SQLITE_CREATE_VTABLE: "CREATE VIRTUAL TABLE",
    sqlite3.SQLITE_DROP_VTABLE: "DROP VIRTUAL TABLE",
}
# Schema changes; each also writes sqlite_master, which they outrank.
_SCHEMA_CHANGES: dict[int, str] = {
    sqlite3.SQLITE_CREATE_INDEX: "CREATE INDEX",
    sqlite3.SQLITE_CREATE_TABLE: "CREATE TABLE",
    sqlite3.SQLITE_CREATE_TEMP_INDEX: "CREATE TEMP INDEX",
    sqlite3.SQLITE_CREATE_TEMP_TABLE: "CREATE TEMP TABLE",
    sqlite3.SQLITE_CREATE_TEMP_TRIGGER: "CREATE TEMP TRIGGER",
    sqlite3.SQLITE_CREATE_TEMP_VIEW: "CREATE TEMP VIEW",
    sqlite3.SQLITE_CREATE_TRIGGER: "CREATE TRIGGER",
    sqlite3.SQLITE_CREATE_VIEW: "CREATE VIEW",
    sqlite3.SQLITE_DROP_INDEX: "DROP INDEX",
    sqlite3.SQLITE_DROP_TABLE: "DROP TABLE",
    sqlite3.SQLITE_DROP_TEMP_INDEX: "DROP TEMP INDEX",
    sqlite3.SQLITE_DROP_TEMP_TABLE: "DROP TEMP TABLE",
    sqlite3.SQLITE_DROP_TEMP_TRIGGER: "DROP TEMP TRIGGER",
    sqlite3.SQLITE_DROP_TEMP_VIEW: "DROP TEMP VIEW",
    sqlite3.SQLITE_DROP_TRIGGER: "DROP TRIGGER",
    sqlite3.SQLITE_DROP_VIEW: "DROP VIEW",
    # REINDEX is also a step of CREATE INDEX, which must keep its name.
    sqlite3.SQLITE_REINDEX: "REINDEX",
}
_TRANSACTION_CONTROL = frozenset({sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})
_SAVEPOINT_KINDS = {"BEGIN": "SAVEPOINT", "RELEASE": "RELEASE", "ROLLBACK": "ROLLBACK TO"}
_TRANSACTION_WHY = "iogate opens and ends the transaction"
# Readable tables that show more than this database's data: the SQL text of
# every statement compiled on the connection (other clients' included), and
# raw pages (with the remains of deleted rows).
_HIDDEN_TABLES = frozenset({"sqlite_stmt", "sqlite_dbpage"})

# Rank of a refusal when a statement has several: the error names the first
# refusal of the highest rank.
_RANK_DATA_WRITE = 0
_RANK_REFUSED = 1
_RANK_SCHEMA = 2
_RANK_STATEMENT = 3

# Declared in trusted mode at install (see the module docstring), if present.
_EPONYMOUS_TABLES = (
    "json_each",
    "json_tree",
    "dbstat",
    "generate_series",
    "carray",
    "sqlite_stmt",
    "sqlite_dbpage",
)

_MULTIPLE_STATEMENTS = refused("multiple statements", "one statement per operation")
# VACUUM is the one statement that reaches the authorizer only when it runs
# (it attaches its target then, which is refused); inside the transaction
# iogate opens it cannot run at all. Either way the refusal is named from
# its compiled program.
_VACUUM = refused("VACUUM", "it rewrites the database file; VACUUM INTO writes another")
_UNKNOWN_REFUSAL = refused("statement", "SQLite's authorizer refused it")
_NO_DATA_ACCESS = refused("statement", "SQLite reports no data read or write in it")
# Texts known to compile to a data statement, per connection (see
# ConnectionGuard.ran); past this many the record starts over.
_KNOWN_TEXTS = 4096
# A per-process value in the marker: no trusted text can collide with a
# guarded one by accident or by design (see the module docstring).
_NONCE = secrets.token_hex(8)
_MARKERS = {access: f"/* iogate {access.value} {_NONCE} */" for access in Access}


def guarded_text(query: str, access: Access) -> str:
    """``query`` as run under ``access``: its own statement-cache entry."""
    return _MARKERS[access] + query


def classify(action: int, arg1: str | None, arg2: str | None) -> Verdict | None:
    """SQLite's authorizer action as a verdict; None for a read anyone may do.

    ``arg1`` and ``arg2`` are the authorizer's first two detail arguments
    (table and column, function name, PRAGMA name and value...).
    """
    if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
        return None
    if action == sqlite3.SQLITE_READ:
        if arg1 is not None and arg1.lower() in _HIDDEN_TABLES:
            return refused(f"SELECT FROM {arg1}", "it shows more than this database's data")
        return None
    if action == sqlite3.SQLITE_FUNCTION:
        if arg2 is not None and forbidden_function("sqlite", arg2):
            return refused(f"function {arg2}", "it acts outside the database")
        return None
    kind = _DATA_WRITES.get(action)
    if kind is not None:
        table = arg1 or ""
        if table.lower().startswith("sqlite_"):
            # A table-valued PRAGMA (pragma_table_info...) also lands here:
            # its first use declares it as an UPDATE of sqlite_master.
            return refused(f"{_INTERNAL_WRITES[action]} {table}", "it is SQLite's own table")
        return Verdict(kind, writes=True)
    if action == sqlite3.SQLITE_TRANSACTION:
        return refused(arg1 or "BEGIN", _TRANSACTION_WHY)
    if action == sqlite3.SQLITE_SAVEPOINT:
        return refused(_SAVEPOINT_KINDS.get(arg1 or "", "SAVEPOINT"), _TRANSACTION_WHY)
    if action == sqlite3.SQLITE_PRAGMA:
        return refused("PRAGMA", f"PRAGMA {arg1}")
    if action == sqlite3.SQLITE_ATTACH:
        return refused("ATTACH", "it opens another database file")
    kind = _STATEMENTS.get(action) or _SCHEMA_CHANGES.get(action)
    if kind is not None:
        return refused(kind)
    return refused(f"authorizer action {action}")


def _vacuums(conn: sqlite3.Connection, text: str) -> bool:
    """Does ``text`` compile to a VACUUM? (EXPLAIN lists the program, runs nothing.)"""
    try:
        program = conn.execute("EXPLAIN " + text).fetchall()
    except sqlite3.Error:
        return False
    return any(step[1] == "Vacuum" for step in program)


def _rank(action: int, verdict: Verdict) -> int:
    if verdict.writes:
        return _RANK_DATA_WRITE
    if action in _STATEMENTS or action in _TRANSACTION_CONTROL:
        return _RANK_STATEMENT
    if action in _SCHEMA_CHANGES:
        return _RANK_SCHEMA
    return _RANK_REFUSED


def _allows(verdict: Verdict, access: Access) -> bool:
    return verdict.refusal is None and (access is Access.WRITE or not verdict.writes)


def _refusal(verdict: Verdict, access: Access) -> ForbiddenStatementError:
    """The error :func:`require` raises for a verdict ``access`` may not run."""
    try:
        require(verdict, access)
    except ForbiddenStatementError as exc:
        return exc
    raise AssertionError(f"{verdict} was refused but {access} allows it")


class ConnectionGuard:
    """The authorizer of one connection and the access it enforces right now.

    ``access`` is None while the connection runs trusted statements (every
    action is allowed) and an :class:`Access` while it runs a guarded one.
    Used only in the connection's own thread.
    """

    __slots__ = (
        "_compiled",
        "_internal",
        "_known",
        "_naming",
        "_refused",
        "_refused_rank",
        "access",
    )

    def __init__(self) -> None:
        self.access: Access | None = None
        self._refused: Verdict | None = None
        self._refused_rank = -1
        self._internal = False  # the refusal is a step on SQLite's own tables
        self._naming = False  # see _name_refusal
        self._compiled = False  # the authorizer was called for this statement
        # Hashes of texts that compile to data statements. A collision could
        # only let through a statement SQLite reports nothing of: a no-op.
        self._known: set[int] = set()

    def __repr__(self) -> str:
        access = self.access.value if self.access else "trusted"
        return f"<ConnectionGuard {access} refused={self._refused}>"

    @classmethod
    def install(cls, conn: sqlite3.Connection) -> ConnectionGuard:
        """Declare the eponymous tables, then install a guard in trusted mode."""
        for table in _EPONYMOUS_TABLES:
            with contextlib.suppress(sqlite3.Error):  # not compiled into this SQLite
                conn.execute(f"EXPLAIN SELECT * FROM {table}").close()
        guard = cls()
        conn.set_authorizer(guard)
        return guard

    def __call__(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        database: str | None,
        trigger_or_view: str | None,
    ) -> int:
        access = self.access
        if access is None:
            return _ALLOW
        self._compiled = True
        verdict = classify(action, arg1, arg2)
        if verdict is None or _allows(verdict, access):
            return _ALLOW
        internal = action in _INTERNAL_STEPS and (arg1 or "").lower().startswith("sqlite_")
        if internal and self._naming:
            return _ALLOW
        rank = _rank(action, verdict)
        if rank > self._refused_rank:
            self._refused, self._refused_rank, self._internal = verdict, rank, internal
        return _DENY

    def enter(self, access: Access) -> None:
        """Check the statements compiled from now on against ``access``."""
        self.access = access
        self._refused = None
        self._refused_rank = -1
        self._internal = False
        self._compiled = False

    def leave(self) -> None:
        """Back to trusted mode."""
        self.access = None

    def ran(self, conn: sqlite3.Connection, text: str) -> None:
        """Check a guarded statement that ran without error: was it a data statement?

        A few statements make SQLite call the authorizer for nothing at all
        (``REINDEX`` with no index to rebuild, ``DROP TABLE IF EXISTS`` of a
        missing table, an empty text), so the positive list never saw them.
        They have done nothing, and the transaction around them is rolled
        back when this raises. A data statement always reports its SELECT,
        INSERT, UPDATE or DELETE when compiled; when it was not compiled now
        it came from the statement cache, where it was recorded as known.
        """
        access = self.access
        if access is None:
            raise RuntimeError("ConnectionGuard.ran() outside a guarded statement")
        if self._refused is not None:
            # A refusal the statement survived (a virtual table that ignored
            # the error of a statement it compiled): refused all the same.
            raise _refusal(self._refused, access)
        key = hash(text)
        if self._compiled:
            self._remember(conn, key)
            return
        if key in self._known:
            return
        try:
            compiled = conn.execute("EXPLAIN " + text).fetchall()
        except sqlite3.Error:
            compiled = []
        if not compiled:
            raise QueryError("empty query: no statement to run")
        raise _refusal(_NO_DATA_ACCESS, access)

    def _remember(self, conn: sqlite3.Connection, key: int) -> None:
        known = self._known
        if len(known) >= _KNOWN_TEXTS:
            # Start over, and expire every compiled statement with it (any
            # set_authorizer call does), so that each recompiles, and is
            # recorded again, before it runs from the cache.
            known.clear()
            conn.set_authorizer(self)
        known.add(key)

    def refusal(
        self, conn: sqlite3.Connection, text: str, exc: Exception
    ) -> ForbiddenStatementError | None:
        """The refusal behind ``exc``, raised by the guarded statement ``text``.

        None when ``exc`` is an ordinary error of an allowed statement. Call
        it before :meth:`leave`.
        """
        access = self.access
        if access is None:
            raise RuntimeError("ConnectionGuard.refusal() outside a guarded statement")
        if self._internal:
            self._name_refusal(conn, text)
        verdict = self._refused
        if verdict is None:
            if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
                verdict = _MULTIPLE_STATEMENTS
            elif getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_AUTH or (
                str(exc) == "not authorized"
            ):
                verdict = _UNKNOWN_REFUSAL  # never a query_error for a guarded statement
            elif isinstance(exc, sqlite3.OperationalError) and _vacuums(conn, text):
                verdict = _VACUUM  # inside a transaction: it cannot even start
            else:
                return None
        elif verdict.kind == "ATTACH" and _vacuums(conn, text):
            verdict = _VACUUM  # outside one: refused when it attaches its target
        return _refusal(verdict, access)

    def _name_refusal(self, conn: sqlite3.Connection, text: str) -> None:
        """Find the statement behind a refused step on SQLite's own tables.

        Every CREATE and DROP first writes sqlite_master, and ANALYZE first
        creates sqlite_stat1; the refusal of that step stops SQLite before
        the action that names the statement. ``EXPLAIN`` compiles the
        statement again without running any of it, this time letting those
        steps through, so the refusal names ``CREATE TABLE`` and not
        ``INSERT INTO sqlite_master``.
        """
        found, found_rank = self._refused, self._refused_rank
        self._refused, self._refused_rank, self._naming = None, -1, True
        try:
            conn.execute("EXPLAIN " + text).close()
        except sqlite3.Error:
            pass
        finally:
            self._naming = False
        if self._refused is None:
            self._refused, self._refused_rank = found, found_rank


class GuardableConnection(sqlite3.Connection):
    """A sqlite3 connection that can carry a :class:`ConnectionGuard`."""

    guard: ConnectionGuard | None = None


def connection_guard(conn: sqlite3.Connection) -> ConnectionGuard:
    """``conn``'s guard, installed on its first guarded statement."""
    if not isinstance(conn, GuardableConnection):
        raise TypeError("guarded SQL needs a connection opened with factory=GuardableConnection")
    guard = conn.guard
    if guard is None:
        guard = conn.guard = ConnectionGuard.install(conn)
    return guard
