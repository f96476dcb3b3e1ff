"""Guarded SQL: what an untrusted client may run, in one place.

A statement from a client key without ``db:NAME:admin`` is *untrusted*. Each
backend classifies it with a real parser (PostgreSQL's own via pglast, a
MySQL-dialect parser for MariaDB, SQLite's authorizer callback) into a
:class:`Verdict`, and :func:`require` decides against the caller's
:class:`Access`:

- ``Access.READ``: data reads only (``SELECT``, ``WITH``, ``VALUES``). The
  statement runs in a READ ONLY transaction that iogate opens and ends with
  ROLLBACK, so the database itself refuses writes and undoes anything
  transactional that the statement changed.
- ``Access.WRITE``: also data writes (``INSERT``, ``UPDATE``, ``DELETE``,
  ``MERGE``, MariaDB's ``REPLACE``), in a transaction iogate opens and ends
  with COMMIT.

Everything else is refused with :class:`ForbiddenStatementError` (HTTP 403
``forbidden_statement``) naming the statement kind: transaction control,
session settings, ``PREPARE``/``DEALLOCATE``, ``LISTEN``, ``LOCK``, ``COPY``,
``DO``/``CALL``, DDL, ``PRAGMA``, ``ATTACH``/``DETACH``, ``VACUUM``, MariaDB's
``SET STATEMENT``, versioned comments and ``INTO OUTFILE``, and more than one
statement in one operation. So are the functions below, whose side effects
no transaction mode stops. The lists are deny-lists of functions known to
reach outside the transaction; they are not the security boundary on their
own: a ``read_url`` with a least-privilege role is (docs/security.md).

Trusted code (a manager used from Python, keys with ``admin``, named
operations from the config file) passes no guard and runs as written.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from iogate.core.errors import ForbiddenStatementError

__all__ = [
    "FORBIDDEN_FUNCTIONS",
    "Access",
    "ForbiddenStatementError",
    "GuardFor",
    "Verdict",
    "forbidden_function",
    "refused",
    "require",
]


class Access(enum.Enum):
    """What an untrusted statement may do on one database."""

    READ = "read"
    WRITE = "write"


GuardFor = Callable[[str], Access | None]
"""The access for untrusted SQL on a database, by its name (None: trusted)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A parser's reading of one statement.

    ``kind`` names it for messages (``SELECT``, ``INSERT``, ``SET``,
    ``CREATE TABLE``...); ``writes`` is true for a data write; ``refusal``
    says why no untrusted key may run it (None for a data statement).
    """

    kind: str
    writes: bool = False
    refusal: str | None = None


def require(verdict: Verdict, access: Access) -> None:
    """Raise :class:`ForbiddenStatementError` unless ``access`` may run it."""
    if verdict.refusal is not None:
        raise ForbiddenStatementError(verdict.refusal, kind=verdict.kind)
    if verdict.writes and access is Access.READ:
        raise ForbiddenStatementError(
            f"{verdict.kind} writes data; this key may only read this database "
            "(db:NAME:write is needed)",
            kind=verdict.kind,
        )


def refused(kind: str, why: str | None = None) -> Verdict:
    """A verdict refusing a statement kind for every non-admin key."""
    reason = f": {why}" if why else ""
    return Verdict(
        kind,
        refusal=f"{kind} is not allowed{reason} "
        "(keys without db:NAME:admin run data statements only)",
    )


# Functions with effects outside the transaction (or outside the database),
# by dialect, lower-case, without schema. Refused for every non-admin key.
_POSTGRES_FUNCTIONS = (
    # large objects: stored outside table data; server-side file import/export
    "lo_import lo_export lo_from_bytea lo_unlink lo_create lo_creat lo_open lo_put "
    "lo_truncate lo_truncate64 lowrite loread lo_close lo_get lo_lseek lo_lseek64 "
    "lo_tell lo_tell64 "
    # server files and directories
    "pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_ls_logdir pg_ls_waldir "
    "pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir "
    "pg_ls_replslotdir pg_file_write pg_file_rename pg_file_unlink pg_file_sync "
    "pg_logdir_ls pg_current_logfile "
    # other backends, the server process, replication, statistics
    "pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile pg_promote "
    "pg_switch_wal pg_create_restore_point pg_backup_start pg_backup_stop pg_start_backup "
    "pg_stop_backup pg_log_backend_memory_contexts pg_wal_replay_pause "
    "pg_wal_replay_resume pg_create_physical_replication_slot "
    "pg_create_logical_replication_slot pg_drop_replication_slot "
    "pg_replication_slot_advance pg_copy_physical_replication_slot "
    "pg_copy_logical_replication_slot pg_logical_emit_message "
    "pg_logical_slot_get_changes pg_logical_slot_get_binary_changes "
    "pg_import_system_collations pg_stat_reset pg_stat_reset_shared "
    "pg_stat_reset_single_table_counters pg_stat_reset_single_function_counters "
    "pg_stat_reset_slru pg_stat_reset_replication_slot pg_stat_reset_subscription_stats "
    "pg_notify "
    # session state that outlives the transaction
    "set_config pg_advisory_lock pg_advisory_lock_shared pg_try_advisory_lock "
    "pg_try_advisory_lock_shared pg_advisory_unlock pg_advisory_unlock_shared "
    "pg_advisory_unlock_all "
    # other servers
    "dblink dblink_exec dblink_connect dblink_connect_u dblink_send_query dblink_open "
    "dblink_fetch"
)
_MYSQL_FUNCTIONS = (
    "load_file "  # server files
    # session state that outlives the transaction
    "get_lock release_lock release_all_locks last_insert_id "
    # waits on replication
    "master_pos_wait master_gtid_wait source_pos_wait"
)
_SQLITE_FUNCTIONS = (
    "load_extension fts3_tokenizer readfile writefile edit "
    # what other callers did on the shared writer connection (use RETURNING)
    "last_insert_rowid changes total_changes"
)

FORBIDDEN_FUNCTIONS: dict[str, frozenset[str]] = {
    "postgresql": frozenset(_POSTGRES_FUNCTIONS.split()),
    "mysql": frozenset(_MYSQL_FUNCTIONS.split()),
    "sqlite": frozenset(_SQLITE_FUNCTIONS.split()),
}


def forbidden_function(dialect: str, name: str) -> bool:
    """Is the function ``name`` (possibly schema-qualified) refused for ``dialect``?"""
    return name.rpartition(".")[2].lower() in FORBIDDEN_FUNCTIONS[dialect]
