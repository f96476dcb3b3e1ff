"""PostgreSQL on asyncpg, through iogate's FIFO pool.

asyncpg is imported only in this package and its exceptions are mapped to
iogate errors at this edge, in one place (:mod:`.errors`). Statements run
as prepared statements cached per connection (one round trip per query,
the command status available for ``rows_affected``); for trusted code
only, a multi-statement string without parameters falls back to the simple
protocol. The server enforces
``statement_timeout``; a request deadline is passed down as asyncpg's
client-side timeout, which also cancels the statement on the server.

Guarded (untrusted) SQL and ``read_only`` work never use the simple
protocol, so one operation is one statement (a prepared statement cannot
hold two). Guarded SQL is classified by PostgreSQL's own parser
(:mod:`.guard`) and runs in a transaction opened
here: ``BEGIN READ ONLY`` ... ``ROLLBACK`` for readers, ``BEGIN`` ...
``COMMIT`` for writers, so whatever session state the statement touched
transactionally is undone or committed by the server itself.

A connection lost mid-operation is ``connection_error`` when nothing can
have been written, ``unknown_outcome`` when a write (or its COMMIT) was sent
and its answer lost. A connection that sat idle past ``idle_check_interval``
is checked with ``SELECT 1`` before it is handed out (:mod:`.pool`), so
one the server ended meanwhile (a restart, a failover,
``pg_terminate_backend``) is replaced instead of failing its next caller.

Session state. Without ``reset_session``, what trusted code sets on its
session (``SET search_path``, ``SET ROLE``, a temporary table) stays on that
pooled connection for its next user, unless the call failed or left a
transaction open (then the connection is reset). ``SET LOCAL`` inside
``transaction()`` ends with the transaction. With ``reset_session=True``
every connection trusted code used is reset before it goes back to the
pool: asyncpg's ``reset()`` (ROLLBACK, ``CLOSE ALL``, ``UNLISTEN *``,
advisory locks, ``RESET ALL``) preceded by ``SET SESSION AUTHORIZATION
DEFAULT`` (``RESET ALL`` leaves the role alone) and followed by ``DISCARD
TEMP``: what ``DISCARD ALL`` does except deallocating the prepared
statements the connection keeps cached. Guarded SQL needs no reset (it can
set nothing and runs in a transaction iogate ends).

Results are bounded while they are read. ``max_rows`` is sent with the
statement as the extended protocol's row count (Execute's limit, as asyncpg's
``fetchrow`` sends 1): the server stops at ``max_rows + 1`` rows and the SQL
is unchanged; a write still runs to completion, only the rows it returns are
cut. ``max_result_bytes`` is counted on the socket (:mod:`.meter`):
once a result has brought in more than that (one 150 MB value, say), the
connection is aborted before asyncpg buffers the rest, and the operation
fails with ``result_too_large``; the server ends the statement and rolls
back its transaction when the connection goes. Without a row cap each row
also counts what it costs in Python. A point query still takes one round
trip, plus a few attribute stores.

The modules: :mod:`.connection` (opening, resetting, closing a connection),
:mod:`.errors` (the driver-error map), :mod:`.guard` (guarded SQL),
:mod:`.statements` (one statement: prepare, cache, bounded read),
:mod:`.meter` (the byte meter), :mod:`.results` (rows as a Result) and
:mod:`.manager` (:class:`AsyncPostgreSQLManager`).
"""

from iogate.backends.postgres.connection import PgConnection, connect_postgres
from iogate.backends.postgres.manager import AsyncPostgreSQLManager
from iogate.backends.postgres.statements import is_single_row_insert

__all__ = ["AsyncPostgreSQLManager", "PgConnection", "connect_postgres", "is_single_row_insert"]
