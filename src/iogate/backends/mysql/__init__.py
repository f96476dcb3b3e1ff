"""MySQL and MariaDB on asyncmy, through iogate's FIFO pool.

asyncmy is imported only in this package and its exceptions are mapped to
iogate errors at this edge, in one place (:mod:`.errors`). Connections
run in autocommit mode with multi-statement support switched off at the
protocol level, so one call is always one statement (the server itself
refuses ``SELECT 1; DROP TABLE t``).

Queries may use ``?``, ``$1..$n`` or ``%s`` placeholders (one style per
query); they are rewritten to the driver's ``%s`` outside string literals,
quoted identifiers and comments, and every other ``%`` is a literal percent
sign. Statements with parameters run as server-side prepared statements
(asyncmy's statement cache), so values are bound by the server, not spliced
into the SQL text.

The server enforces ``statement_timeout`` (MariaDB ``max_statement_time``,
MySQL ``max_execution_time``, the latter for SELECT only); the connection
survives it. A request deadline shorter than that is enforced on the client:
the interrupted connection cannot be reused (the MySQL protocol has no
cancel request), so it is discarded and its server thread is killed from a
side connection, which also stops the statement and rolls back its
transaction.

Read-only work runs with ``SET SESSION TRANSACTION READ ONLY``: a plain
``START TRANSACTION READ ONLY`` is not enough, because DDL commits the
current transaction implicitly and would then run in a new, read-write one.

Guarded (untrusted) SQL, :mod:`iogate.core.sqlguard`: the statement is
classified by :mod:`.guard` before a connection is
touched, then runs in a transaction iogate opens and ends: a reader's in a
read-only session and transaction ended by ROLLBACK, a writer's ended by
COMMIT, so a write answered as a success is committed. Once COMMIT (or an
autocommit write) has been sent, a lost connection is ``unknown_outcome``;
before that it is a ``connection_error``: the server rolls back the open
transaction of a connection that goes away.

A connection that sat idle past ``idle_check_interval`` is checked with
the protocol's COM_PING before it is handed out (:mod:`.pool`), so one the
server ended meanwhile (``KILL``, ``wait_timeout``, a restart) is replaced
instead of failing its next caller.

Session state. Without ``reset_session``, what trusted code sets with
``SET`` (session variables, ``SET ROLE``, user variables) stays on that
pooled connection for its next user; iogate only rolls back, turns
autocommit on and unlocks tables after statements that may leave a
transaction or locks behind. With ``reset_session=True`` every connection
trusted code used is reset with the protocol's COM_RESET_CONNECTION (MariaDB
10.2+, MySQL 5.7+: session variables, role, user variables, temporary
tables, locks and prepared statements), then iogate's session settings
(character set, autocommit, statement timeout) are sent again.

Results are bounded while they are read. ``max_result_bytes`` is metered on
the socket (:mod:`.meter`): every packet is charged in full as soon
as its header arrives, plus what a row becomes in Python; a packet that
would pass the cap aborts the connection before asyncmy buffers it, its
server thread is killed, and the operation fails with ``result_too_large``.
``max_rows`` cuts the rows read within that budget (``truncated``): the
server cannot be told to stop at a row count without changing the statement
or the session (``sql_select_limit`` is session state, which a connection
must give back as it got it), and an unbuffered cursor would lose the
server-side prepared path (parameters sent as text, a point query half as
slow again). So a result of more rows than ``max_rows`` is truncated while
its whole is within ``max_result_bytes``, and refused beyond it.

The modules: :mod:`.connection` (the URL, opening, resetting, closing a
connection), :mod:`.errors` (the driver-error map), :mod:`.placeholders`,
:mod:`.guard` (guarded SQL), :mod:`.meter` (the byte meter),
:mod:`.results` (rows as a Result) and :mod:`.manager`
(:class:`AsyncMySQLManager`).
"""

from iogate.backends.mysql.connection import (
    MySQLConnection,
    MySQLTarget,
    connect_mysql,
    parse_mysql_url,
)
from iogate.backends.mysql.manager import AsyncMySQLManager
from iogate.backends.mysql.placeholders import bind_parameters, classify_guarded

__all__ = [
    "AsyncMySQLManager",
    "MySQLConnection",
    "MySQLTarget",
    "bind_parameters",
    "classify_guarded",
    "connect_mysql",
    "parse_mysql_url",
]
