"""Warn when untrusted SQL reaches a database as a superuser.

Guarded SQL (:mod:`iogate.core.sqlguard`) refuses what it knows to be
dangerous, but the boundary that holds whatever a parser misses is the
database's own grants. A PostgreSQL superuser (or a member of
``pg_read_server_files``/``pg_write_server_files``/``pg_execute_server_program``)
and a MariaDB account with ``SUPER`` or ``FILE`` can read and write server
files and more; ``iogate check`` and ``iogate serve`` name every database
whose raw SQL is open to keys without ``admin`` over such an account
(docs/security.md shows the least-privilege roles to use instead).
"""

from __future__ import annotations

import logging

from iogate.core.deadline import Deadline
from iogate.core.errors import IogateError
from iogate.gateway.auth import Authenticator
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator

__all__ = ["privilege_warnings"]

logger = logging.getLogger("iogate.gateway")

_PROBES = {
    "postgresql": (
        "SELECT (rolsuper OR pg_has_role('pg_read_server_files', 'MEMBER')"
        " OR pg_has_role('pg_write_server_files', 'MEMBER')"
        " OR pg_has_role('pg_execute_server_program', 'MEMBER')) AS privileged"
        " FROM pg_roles WHERE rolname = current_user"
    ),
    "mysql": (
        "SELECT COUNT(*) > 0 AS privileged FROM information_schema.USER_PRIVILEGES"
        " WHERE PRIVILEGE_TYPE IN ('SUPER', 'FILE') AND GRANTEE = CONCAT(''''"
        ", SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''',"
        " SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')"
    ),
}


PROBE_TIMEOUT = 3.0


async def privilege_warnings(
    settings: Settings, orchestrator: AsyncOperationOrchestrator, *, timeout: float = PROBE_TIMEOUT
) -> list[str]:
    """One line per database whose untrusted SQL runs as a privileged account."""
    principals = Authenticator.from_settings(settings).principals
    warnings: list[str] = []
    for name, db in settings.databases.items():
        probe = _PROBES.get(db.type)
        if probe is None or not db.allow_raw_sql:
            continue
        guarded = [p for p in principals if p.allows(f"db:{name}:read")]
        guarded = [p for p in guarded if p.sql_guard(name, db) is not None]
        if not guarded:
            continue  # no keys (loopback, all trusted) or only admin keys
        writers = any(p.can_write(name) and not db.read_only for p in guarded)
        pools = []
        if writers or name not in orchestrator.read_managers:
            pools.append(("url", orchestrator.databases[name]))
        if name in orchestrator.read_managers:
            pools.append(("read_url", orchestrator.read_managers[name]))
        for setting, manager in pools:
            result = await manager.execute_query(probe, deadline=Deadline(timeout))
            if not result.success:
                logger.debug("privilege probe on %s failed: %s", name, result.error)
                continue
            rows = result.data or []
            if rows and rows[0].get("privileged"):
                warnings.append(
                    f"database {name!r}: raw SQL from keys without db:{name}:admin runs over "
                    f"a superuser account ([databases.{name}] {setting}); give it a "
                    "least-privilege role (docs/security.md)"
                )
    return warnings


async def log_privilege_warnings(
    settings: Settings, orchestrator: AsyncOperationOrchestrator
) -> None:
    try:
        for line in await privilege_warnings(settings, orchestrator):
            logger.warning(line)
    except IogateError as exc:  # a probe must never stop start-up
        logger.debug("privilege probe failed: %s", exc)
