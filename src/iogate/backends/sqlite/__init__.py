"""SQLite: parallel readers, one group-committing writer, a thread per connection.

``readers`` connections opened with ``PRAGMA query_only = ON`` serve reads
(WAL lets them run beside the writer); one writer connection takes every
write. Each sqlite3 connection lives in its own worker thread, which drains
every job queued for it and hands the outcomes back in one hop; consecutive
writes commit as one transaction, consecutive reads share one snapshot, and
a statement whose caller gave up or that ran past ``statement_timeout`` is
interrupted by SQLite itself. Result caps bound what is read, not only what
is returned. Guarded statements (a client key's SQL) are judged by SQLite's
own authorizer, never by their text.

The pieces, each in its module:

- :mod:`.manager`: ``AsyncSQLiteManager``, which connection runs each
  statement (routing by first keyword, guarded statements, ``execute_many``);
- :mod:`.pool`: the readers and the writer, their queues, writer sessions;
- :mod:`.transaction`: ``manager.transaction()`` on the writer;
- :mod:`.worker`: a connection's thread, its queues, waiting for an outcome;
- :mod:`.groups`: group commit and shared read transactions (thread side);
- :mod:`.statements`: running one statement within the result caps (thread side);
- :mod:`.connection`: opening a connection, its progress-handler deadline;
- :mod:`.dialect`: statement keywords, placeholders, errors, Result shaping;
- :mod:`.guard`: the authorizer that judges guarded SQL.

The modules import each other relatively, so that a copy of an older version
loads beside this one for an in-process A/B (``bench/db_bench.py
--sqlite-baseline``).
"""

from .manager import (
    DEFAULT_SQLITE_CONNECTIONS as DEFAULT_SQLITE_CONNECTIONS,  # importable, as before
)
from .manager import AsyncSQLiteManager

__all__ = ["AsyncSQLiteManager"]
