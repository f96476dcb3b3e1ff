"""Classify untrusted PostgreSQL statements with PostgreSQL's own parser.

pglast embeds libpg_query, the server's parser compiled as a library, so a
statement is read exactly as the server will read it: no comment, quoting
or dollar-quote trick hides a second statement or a function call from it.
The verdict (:class:`iogate.core.sqlguard.Verdict`) is cached by query
text, so a service repeating its queries parses each one once.

What it decides: one statement; a data statement (``SELECT``/``VALUES``,
``WITH``, ``INSERT``/``UPDATE``/``DELETE``/``MERGE``; a data-modifying
``WITH`` counts as a write); ``SELECT ... INTO`` (which creates a table)
refused; no call anywhere in the tree to a function of
``FORBIDDEN_FUNCTIONS["postgresql"]``. What the server then enforces: the
transaction iogate opens around it (READ ONLY and rolled back for readers).
"""

from __future__ import annotations

import functools

from pglast import ast, parser
from pglast.visitors import Visitor

from iogate.core.errors import QueryError
from iogate.core.sqlguard import Verdict, forbidden_function, refused

__all__ = ["classify_postgres"]

_CACHE_SIZE = 2048
# Longer texts are classified every time instead of filling the cache.
_CACHE_CHARS = 8192

_DATA_WRITES: dict[type[ast.Node], str] = {
    ast.InsertStmt: "INSERT",
    ast.UpdateStmt: "UPDATE",
    ast.DeleteStmt: "DELETE",
    ast.MergeStmt: "MERGE",
}
# Names for the statement kinds a client is most likely to try.
_KIND_NAMES: dict[str, str] = {
    "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW",
    "CreateStmt": "CREATE TABLE",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "ViewStmt": "CREATE VIEW",
    "IndexStmt": "CREATE INDEX",
    "CreateFunctionStmt": "CREATE FUNCTION",
    "DropStmt": "DROP",
    "AlterTableStmt": "ALTER TABLE",
    "TruncateStmt": "TRUNCATE",
    "CopyStmt": "COPY",
    "DoStmt": "DO",
    "CallStmt": "CALL",
    "PrepareStmt": "PREPARE",
    "ExecuteStmt": "EXECUTE",
    "DeallocateStmt": "DEALLOCATE",
    "ListenStmt": "LISTEN",
    "UnlistenStmt": "UNLISTEN",
    "NotifyStmt": "NOTIFY",
    "LockStmt": "LOCK",
    "DeclareCursorStmt": "DECLARE CURSOR",
    "ExplainStmt": "EXPLAIN",
    "DiscardStmt": "DISCARD",
    "GrantStmt": "GRANT",
    "GrantRoleStmt": "GRANT",
    "CreateRoleStmt": "CREATE ROLE",
    "AlterRoleStmt": "ALTER ROLE",
    "VacuumStmt": "VACUUM",
    "CheckPointStmt": "CHECKPOINT",
    "LoadStmt": "LOAD",
}


def classify_postgres(query: str) -> Verdict:
    """The verdict on ``query``; raises QueryError when it does not parse."""
    if len(query) <= _CACHE_CHARS:
        return _classify_cached(query)
    return _classify(query)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _classify_cached(query: str) -> Verdict:
    return _classify(query)


def _classify(query: str) -> Verdict:
    try:
        statements = parser.parse_sql(query)
    except parser.ParseError as exc:
        raise QueryError(f"syntax error: {exc}", sqlstate="42601") from None
    if not statements:
        raise QueryError("empty query: no statement to run", sqlstate="42601")
    if len(statements) > 1:
        return refused(
            "multiple statements", f"{len(statements)} found; one statement per operation"
        )
    node = statements[0].stmt
    assert node is not None  # a RawStmt always holds a statement
    if isinstance(node, ast.SelectStmt):
        kind, writes = "SELECT", False
    elif type(node) in _DATA_WRITES:
        kind, writes = _DATA_WRITES[type(node)], True
    else:
        return refused(_kind_name(node))
    tree = _Tree()
    tree(node)
    if tree.function is not None:
        return refused(f"function {tree.function}", "it acts outside the transaction")
    if tree.select_into:
        return refused("SELECT INTO", "it creates a table")
    return Verdict(kind, writes=writes or tree.writes)


def _kind_name(node: ast.Node) -> str:
    if isinstance(node, ast.TransactionStmt):
        # TRANS_STMT_ROLLBACK -> ROLLBACK, TRANS_STMT_PREPARE -> PREPARE TRANSACTION
        name = (
            str(getattr(node.kind, "name", "TRANSACTION"))
            .removeprefix("TRANS_STMT_")
            .replace("_", " ")
        )
        return "PREPARE TRANSACTION" if name == "PREPARE" else name
    name = type(node).__name__
    return _KIND_NAMES.get(name, name.removesuffix("Stmt"))


class _Tree(Visitor):
    """One walk of the whole tree (CTEs, subqueries, FROM functions)."""

    def __init__(self) -> None:
        super().__init__()
        self.function: str | None = None
        self.writes = False
        self.select_into = False

    def visit_FuncCall(self, ancestors: object, node: ast.FuncCall) -> None:
        name = ".".join(part.sval for part in node.funcname or ())
        if self.function is None and forbidden_function("postgresql", name):
            self.function = name

    def visit_IntoClause(self, ancestors: object, node: ast.IntoClause) -> None:
        self.select_into = True

    def visit_InsertStmt(self, ancestors: object, node: ast.Node) -> None:
        self.writes = True

    visit_UpdateStmt = visit_InsertStmt
    visit_DeleteStmt = visit_InsertStmt
    visit_MergeStmt = visit_InsertStmt
