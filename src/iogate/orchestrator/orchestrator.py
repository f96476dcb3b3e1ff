"""The registry of named resources and the seed's orchestrator API.

``AsyncOperationOrchestrator`` holds named database managers (and API
managers, once added) and runs operations by name, always returning a
``Result``: an unknown name is a failed Result with error_type
``not_found``, never an exception. The most recently created or entered
orchestrator is the "current" one that ``iogate.compat.get_database_connection(name)``
resolves names on (seed 000).
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from typing_extensions import Unpack

from iogate.backends.base import AsyncDatabaseManager
from iogate.cache import set_database_lookup
from iogate.core.config import DatabaseOptions
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, IogateError, ResourceNotFoundError
from iogate.core.options import APIManagerOptions, DatabaseManagerOptions
from iogate.core.params import Params
from iogate.core.resource import Kind, Resource
from iogate.core.result import Result
from iogate.core.sqlguard import Access
from iogate.orchestrator.batch import execute_batch, run_transaction
from iogate.orchestrator.operations import execute_named_operation, register_operation
from iogate.orchestrator.registry import NamedOperation, OperationRegistry, python_operations

if TYPE_CHECKING:
    from iogate.backends.http import AsyncAPIManager

__all__ = [
    "AsyncOperationOrchestrator",
    "DatabaseType",
    "current_orchestrator",
]


class DatabaseType(enum.StrEnum):
    POSTGRESQL = "postgresql"
    SQLITE = "sqlite"
    MYSQL = "mysql"
    REDIS = "redis"
    MEMORY = "memory"

    @classmethod
    def parse(cls, value: DatabaseType | str) -> DatabaseType:
        if isinstance(value, DatabaseType):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            known = ", ".join(t.value for t in cls)
            raise ConfigError(f"unknown database type {value!r} (known: {known})") from None


# type -> (module, class); imported lazily so a missing optional driver only
# matters to whoever uses that type.
_MANAGERS: dict[DatabaseType, tuple[str, str]] = {
    DatabaseType.POSTGRESQL: ("iogate.backends.postgres", "AsyncPostgreSQLManager"),
    DatabaseType.SQLITE: ("iogate.backends.sqlite", "AsyncSQLiteManager"),
    DatabaseType.MYSQL: ("iogate.backends.mysql", "AsyncMySQLManager"),
    DatabaseType.REDIS: ("iogate.backends.redis", "AsyncRedisManager"),
    DatabaseType.MEMORY: ("iogate.backends.memory", "AsyncMemoryManager"),
}

# Options only the SQL managers understand (DatabaseOptions); others take
# their own keyword arguments.
_SQL_TYPES = frozenset({DatabaseType.POSTGRESQL, DatabaseType.SQLITE, DatabaseType.MYSQL})


def create_database_manager(
    name: str,
    db_type: DatabaseType | str,
    conn_string: str,
    **options: Unpack[DatabaseManagerOptions],
) -> AsyncDatabaseManager:
    """A manager of ``db_type`` for ``conn_string`` (not opened yet)."""
    kind = DatabaseType.parse(db_type)
    module_name, class_name = _MANAGERS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"database type {kind.value!r} needs a driver that is not installed: {exc.name}"
        ) from exc
    manager_class: Callable[..., AsyncDatabaseManager] = getattr(module, class_name)
    if kind in _SQL_TYPES:
        return manager_class(conn_string, name=name, options=DatabaseOptions.from_kwargs(**options))
    return manager_class(conn_string, name=name, **options)


_current: AsyncOperationOrchestrator | None = None


def current_orchestrator() -> AsyncOperationOrchestrator:
    if _current is None:
        raise ResourceNotFoundError(
            "no current orchestrator: create an AsyncOperationOrchestrator first"
        )
    return _current


def _current_database(name: str) -> AsyncDatabaseManager:
    return current_orchestrator().get_manager(name)


# ``@cached(database="NAME")`` names a database of the current orchestrator.
set_database_lookup(_current_database)


class JobSubmitter(Protocol):
    """What :meth:`AsyncOperationOrchestrator.submit_batch_job` hands jobs to."""

    async def submit_from(self, operations: Sequence[Any], options: Mapping[str, Any]) -> Any: ...


class AsyncOperationOrchestrator:
    """Named resources and the operations run on them (seed 000)."""

    def __init__(self) -> None:
        global _current
        self.databases: dict[str, AsyncDatabaseManager] = {}
        # A second pool per database for untrusted reads (``read_url``): a
        # least-privilege role, so the database's grants refuse any write.
        self.read_managers: dict[str, AsyncDatabaseManager] = {}
        self.apis: dict[str, AsyncAPIManager] = {}
        # Named operations: those registered on this orchestrator alone, then
        # (the parent) every @operation function (docs/decisions.md).
        self.operations = OperationRegistry(parent=python_operations)
        # The job service attached by iogate.jobs.JobService (durable jobs).
        self.jobs: JobSubmitter | None = None
        self._closed = False
        _current = self

    def __repr__(self) -> str:
        return (
            f"<AsyncOperationOrchestrator databases={sorted(self.databases)} "
            f"apis={sorted(self.apis)}>"
        )

    # -- lifecycle --------------------------------------------------------------

    async def __aenter__(self) -> AsyncOperationOrchestrator:
        global _current
        _current = self
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every manager; idempotent."""
        global _current
        if self._closed:
            return
        self._closed = True
        managers: list[Any] = [
            *self.databases.values(),
            *self.read_managers.values(),
            *self.apis.values(),
        ]
        await asyncio.gather(*(m.close() for m in managers), return_exceptions=True)
        if _current is self:
            _current = None

    # -- registration -------------------------------------------------------------

    def add_manager(self, name: str, manager: AsyncDatabaseManager) -> AsyncDatabaseManager:
        """Register an existing manager under ``name`` (opened on first use)."""
        self._check_name(name)
        manager.name = name
        self.databases[name] = manager
        return manager

    def add_read_manager(self, name: str, manager: AsyncDatabaseManager) -> AsyncDatabaseManager:
        """Serve untrusted reads (``guard=Access.READ``) of the registered
        database ``name`` from ``manager``: a pool logged in as a role that
        may only read, so the database itself enforces read-only by grants."""
        if name not in self.databases:
            raise ConfigError(f"no database {name!r} to add a read pool to")
        manager.name = name
        self.read_managers[name] = manager
        return manager

    async def add_database_manager(
        self,
        name: str,
        db_type: DatabaseType | str,
        conn_string: str,
        **options: Unpack[DatabaseManagerOptions],
    ) -> AsyncDatabaseManager:
        """Create, open and register a database manager.

        Raises the connection error when the database cannot be reached
        (nothing is registered then), and ConfigError for bad options.
        """
        self._check_name(name)
        manager = create_database_manager(name, db_type, conn_string, **options)
        try:
            await manager.initialize_pool()
        except BaseException:
            await manager.close()
            raise
        self.databases[name] = manager
        return manager

    def _check_name(self, name: str) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError("a resource name must be a non-empty string")
        if name in self.databases or name in self.apis:
            raise ConfigError(f"a resource named {name!r} is already registered")

    async def add_api_manager(
        self, name: str, base_url: str, **options: Unpack[APIManagerOptions]
    ) -> AsyncAPIManager:
        """Create, open and register an ``AsyncAPIManager`` for ``base_url``."""
        self._check_name(name)
        from iogate.backends.http import AsyncAPIManager

        manager = AsyncAPIManager(base_url, name=name, **options)
        await manager.initialize_session()
        self.apis[name] = manager
        return manager

    def add_api(self, name: str, manager: AsyncAPIManager) -> AsyncAPIManager:
        """Register an existing API manager under ``name``."""
        self._check_name(name)
        manager.name = name
        self.apis[name] = manager
        return manager

    def get_api_manager(self, name: str) -> AsyncAPIManager:
        try:
            return self.apis[name]
        except KeyError:
            raise ResourceNotFoundError(f"unknown api {name!r}") from None

    def get_manager(self, name: str) -> AsyncDatabaseManager:
        try:
            return self.databases[name]
        except KeyError:
            raise ResourceNotFoundError(f"unknown database {name!r}") from None

    # -- operations ---------------------------------------------------------------

    async def execute_database_operation(
        self,
        db_name: str,
        query: str,
        params: Params = None,
        *,
        deadline: Deadline | None = None,
        read_only: bool = False,
        max_rows: int | None = None,
        guard: Access | None = None,
        max_result_bytes: int | None = None,
    ) -> Result:
        """Run ``query`` on the database named ``db_name``; never raises.

        ``guard`` runs it as untrusted SQL; ``max_rows`` and
        ``max_result_bytes`` cap what is read (see ``execute_query``)."""
        manager = self.databases.get(db_name)
        if manager is None:
            return Result.fail(
                f"unknown database {db_name!r}", "not_found", resource=db_name, operation="query"
            )
        if guard is Access.READ:
            manager = self.read_managers.get(db_name, manager)
        return await manager.execute_query(
            query,
            params,
            deadline=deadline,
            read_only=read_only,
            max_rows=max_rows,
            guard=guard,
            max_result_bytes=max_result_bytes,
        )

    async def execute_api_operation(
        self,
        api_name: str,
        method: str,
        endpoint: str,
        data: Any = None,
        params: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        deadline: Deadline | None = None,
    ) -> Result:
        """Call ``method endpoint`` on the API named ``api_name``; never raises."""
        manager = self.apis.get(api_name)
        if manager is None:
            return Result.fail(
                f"unknown api {api_name!r}", "not_found", resource=api_name, operation=method
            )
        result: Result = await manager.request(
            method, endpoint, data=data, params=params, headers=headers, deadline=deadline
        )
        return result

    # -- batches and named operations ----------------------------------------------

    async def execute_batch_operations(
        self,
        operations: Sequence[Any],
        concurrency: int = 10,
        atomic: bool = False,
        deadline: Deadline | None = None,
    ) -> list[Result]:
        """One Result per operation, in order (see iogate.orchestrator.batch)."""
        return await execute_batch(
            self, operations, concurrency=concurrency, atomic=atomic, deadline=deadline
        )

    def attach_jobs(self, service: JobSubmitter | None) -> None:
        """Set (or, with None, remove) the service behind :meth:`submit_batch_job`."""
        self.jobs = service

    async def submit_batch_job(self, operations: Sequence[Any], **options: Any) -> Any:
        """Submit ``operations`` as a durable job; returns a ``JobHandle``
        (``wait()``, ``progress()``, ``cancel()``, ``results()``).

        Needs a job service: ``await iogate.jobs.JobService.start(orchestrator,
        store=..., broker=...)`` attaches one (docs/jobs.md). ``options``:
        ``concurrency``, ``max_rows``, ``guards``.
        """
        if self.jobs is None:
            raise ConfigError(
                "no job service: start one with "
                "`await iogate.jobs.JobService.start(orchestrator, store=...)` (docs/jobs.md)"
            )
        return await self.jobs.submit_from(operations, options)

    async def execute_transaction(
        self, db_name: str, queries: Sequence[Any], *, deadline: Deadline | None = None
    ) -> Result:
        """All ``queries`` in one database transaction, all or nothing."""
        return await run_transaction(self, db_name, queries, deadline=deadline)

    def register_operation(self, name: str, **spec: Any) -> NamedOperation:
        """Declare a named ("dedicated") operation on this orchestrator alone
        (see iogate.orchestrator.operations)."""
        return register_operation(self, name, **spec)

    async def execute_named_operation(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> Result:
        """Run the named operation ``name``; never raises for a failure."""
        return await execute_named_operation(self, name, params, deadline=deadline)

    # -- observability --------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        return {
            "databases": {name: m.get_stats() for name, m in self.databases.items()},
            "apis": {name: m.get_stats() for name, m in self.apis.items()},
        }

    async def health_check(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """Ping every resource concurrently; ``{name: {kind, type, status, latency_ms, ...}}``.

        ``kind`` is ``database`` (caches and ``read_url`` pools included) or ``api``.
        """
        resources: dict[str, tuple[str, Any]] = {
            **{name: ("database", m) for name, m in self.databases.items()},
            **{f"{name} (read_url)": ("database", m) for name, m in self.read_managers.items()},
            **{name: ("api", m) for name, m in self.apis.items()},
        }
        checks = await asyncio.gather(*(_check(k, m, timeout) for k, m in resources.values()))
        return dict(zip(resources, checks, strict=True))

    async def readiness(
        self, timeout: float = 2.0, *, include_apis: bool = False
    ) -> dict[str, Any]:
        """Whether this process can serve: ``{ready, down, degraded, resources}``.

        The databases (caches and ``read_url`` pools included) must answer. APIs
        count only with ``include_apis``: otherwise an API that is down, or whose
        circuit is open or half-open, is listed in ``degraded`` and leaves
        ``ready`` true, so one failing upstream does not take every instance out
        of a load balancer while the databases are fine. Each check gains
        ``required``.
        """
        checks = await self.health_check(timeout)
        down: list[str] = []
        degraded: list[str] = []
        for name in sorted(checks):
            check = checks[name]
            check["required"] = check["kind"] == "database" or include_apis
            if check["status"] != "up":
                (down if check["required"] else degraded).append(name)
            elif check.get("circuit") in ("open", "half_open"):
                degraded.append(name)  # answering TCP, but its breaker is still testing
        return {"ready": not down, "down": down, "degraded": degraded, "resources": checks}


async def _check(kind: str, manager: Resource, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    entry: dict[str, Any] = {"kind": kind, "type": manager.backend}
    try:
        await manager.ping(timeout)
    except IogateError as exc:
        entry.update(status="down", error=str(exc), error_type=exc.error_type)
    except Exception as exc:  # a resource check must report, never crash /ready
        entry.update(status="down", error=type(exc).__name__, error_type="internal_error")
    else:
        entry["status"] = "up"
    entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
    if manager.kind is Kind.API:
        entry["circuit"] = manager.health().breaker
    return entry
