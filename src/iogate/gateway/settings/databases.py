"""``[databases.NAME]``: a model per ``type``, each with the keys its manager honours.

``DatabaseSettings`` is the union of the five, told apart by ``type``. A key
that another type takes is refused with the type named
(``databases.cache.read_only: not supported by type "memory" ...``), so a
setting either works on a backend or the config does not load: nothing is
accepted and then ignored. Every model answers the same questions
(``url``, ``path``, ``read_url``, ``read_only``, ``allow_raw_sql``,
``adaptive_concurrency``, ``connection_string()``, ``manager_options()``);
where a type has no such key the answer is fixed (no URL, never read-only).

The SQL models are checked by building the library's ``DatabaseOptions``
from them, so its rules (``min_connections`` at most ``max_connections``)
reject a value at load time, under the database's path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from iogate.core.config import DatabaseOptions
from iogate.core.errors import ConfigError
from iogate.gateway.settings.base import (
    URL_SCHEMES,
    AdaptiveConcurrencySettings,
    Strict,
    adaptive_switch,
    check_url,
)

if TYPE_CHECKING:
    from iogate.gateway.settings.gateway import GatewaySettings

__all__ = [
    "DATABASE_TYPES",
    "DatabaseSettings",
    "MemorySettings",
    "MySQLSettings",
    "PostgreSQLSettings",
    "RedisSettings",
    "SQLiteSettings",
    "unsupported_key",
]

# The SQLite manager's own default: one writer and four readers.
SQLITE_CONNECTIONS = 5


class _Database(Strict):
    """The keys every type takes; the gateway enforces both for any backend."""

    # false: /database/execute answers 403; only named operations use it.
    allow_raw_sql: bool = True
    # Latency-driven admission in the gateway (off unless set; docs/reliability.md).
    adaptive_concurrency: AdaptiveConcurrencySettings | None = None

    _adaptive = field_validator("adaptive_concurrency", mode="before")(adaptive_switch)

    def connection_string(self) -> str:
        return ""

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        """Keyword options for ``create_database_manager``: only those set."""
        return {}


def _set(model: Strict, names: tuple[str, ...]) -> dict[str, Any]:
    """The keys among ``names`` the file gave (unset ones keep the manager's default)."""
    return {name: value for name in names if (value := getattr(model, name)) is not None}


class _SQLDatabase(_Database):
    """The keys of the three SQL managers (``DatabaseOptions``) that all of them honour."""

    max_connections: int | None = Field(default=None, gt=0)
    acquire_timeout: float | None = Field(default=None, gt=0)
    statement_timeout: float | None = Field(default=None, gt=0)
    read_only: bool = False

    option_keys: ClassVar[tuple[str, ...]] = (
        "max_connections",
        "acquire_timeout",
        "statement_timeout",
    )

    @model_validator(mode="after")
    def _library_rules(self) -> _SQLDatabase:
        try:
            self.options()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        """Keyword options for ``create_database_manager``: only those set.

        With ``gateway``, its result caps (``max_rows``, ``max_result_bytes``)
        become the SQL managers' own, so every path to the database reads
        within them (named operations, transactions, batch groups), not
        only the calls that pass them.
        """
        options = _set(self, self.option_keys)
        options["read_only"] = self.read_only
        options["allow_raw_sql"] = self.allow_raw_sql
        if gateway is not None:
            options["max_rows"] = gateway.max_rows
            options["max_result_bytes"] = gateway.max_result_bytes
        return options

    def options(self, gateway: GatewaySettings | None = None) -> DatabaseOptions:
        """The library's own option object for this database."""
        return DatabaseOptions.from_kwargs(**self.manager_options(gateway))


class _ServerSQLDatabase(_SQLDatabase):
    """PostgreSQL and MySQL: a server, a connection pool, a second URL for reads."""

    type: Literal["postgresql", "mysql"]
    url: str | None = None
    # A least-privilege DSN for untrusted reads.
    read_url: str | None = None
    min_connections: int | None = Field(default=None, ge=0)
    max_idle_time: float | None = Field(default=None, gt=0)
    max_lifetime: float | None = Field(default=None, gt=0)
    idle_check_interval: float | None = Field(default=None, ge=0)
    reset_session: bool | None = None

    option_keys: ClassVar[tuple[str, ...]] = (
        *_SQLDatabase.option_keys,
        "min_connections",
        "max_idle_time",
        "max_lifetime",
        "idle_check_interval",
        "reset_session",
    )

    @property
    def path(self) -> None:
        return None

    @model_validator(mode="after")
    def _location(self) -> _ServerSQLDatabase:
        if self.url is None:
            raise ValueError(f"a {self.type} database needs url")
        check_url(self.url, URL_SCHEMES[self.type])
        if self.read_url is not None:
            check_url(self.read_url, URL_SCHEMES[self.type])
        return self

    def connection_string(self) -> str:
        return self.url or ""


class PostgreSQLSettings(_ServerSQLDatabase):
    type: Literal["postgresql"]


class MySQLSettings(_ServerSQLDatabase):
    type: Literal["mysql"]


class SQLiteSettings(_SQLDatabase):
    type: Literal["sqlite"]
    path: str | None = None
    url: str | None = None
    busy_timeout: float | None = Field(default=None, gt=0)
    synchronous: Literal["NORMAL", "FULL", "OFF"] | None = None

    option_keys: ClassVar[tuple[str, ...]] = (
        *_SQLDatabase.option_keys,
        "busy_timeout",
        "synchronous",
    )

    @property
    def read_url(self) -> None:
        return None

    @model_validator(mode="after")
    def _location(self) -> SQLiteSettings:
        if self.path is None and self.url is None:
            raise ValueError("a sqlite database needs path")
        return self

    def connection_string(self) -> str:
        return self.path or self.url or ""

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        options = super().manager_options(gateway)
        options.setdefault("max_connections", SQLITE_CONNECTIONS)
        # DatabaseOptions' min_connections (1) must fit under a pool of one;
        # SQLite opens its threads itself and has no other use for it.
        options["min_connections"] = 1
        return options


class RedisSettings(_Database):
    """Redis: one multiplexed connection (``auto_pipeline``, the default) or a pool."""

    type: Literal["redis"]
    url: str | None = None
    # Before the pool's keys: their check reads it.
    auto_pipeline: bool | None = None
    max_connections: int | None = Field(default=None, gt=0)
    # How long a call waits for a connection: the pool's, or the shared
    # multiplexed one being (re)made.
    acquire_timeout: float | None = Field(default=None, gt=0)
    # Commands that write are refused (forbidden_statement) before anything is sent.
    read_only: bool = False

    @field_validator("max_connections")
    @classmethod
    def _pool_only(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("auto_pipeline") is not False:
            raise ValueError(
                "applies only with auto_pipeline = false (with auto_pipeline, one "
                "multiplexed connection carries every command: there is no pool)"
            )
        return value

    @property
    def path(self) -> None:
        return None

    @property
    def read_url(self) -> None:
        return None

    @model_validator(mode="after")
    def _location(self) -> RedisSettings:
        if self.url is None:
            raise ValueError("a redis database needs url")
        check_url(self.url, URL_SCHEMES["redis"])
        return self

    def connection_string(self) -> str:
        return self.url or ""

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        options = _set(self, ("max_connections", "acquire_timeout", "auto_pipeline"))
        if self.read_only:
            options["read_only"] = True
        return options


class MemorySettings(_Database):
    """The in-process key-value store: no connection, so nothing to tune."""

    type: Literal["memory"]
    # Commands that write are refused (forbidden_statement).
    read_only: bool = False

    @property
    def url(self) -> None:
        return None

    @property
    def path(self) -> None:
        return None

    @property
    def read_url(self) -> None:
        return None

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        return {"read_only": True} if self.read_only else {}


DatabaseSettings = Annotated[
    PostgreSQLSettings | SQLiteSettings | MySQLSettings | RedisSettings | MemorySettings,
    Field(discriminator="type"),
]

DATABASE_TYPES: dict[str, type[_Database]] = {
    "postgresql": PostgreSQLSettings,
    "sqlite": SQLiteSettings,
    "mysql": MySQLSettings,
    "redis": RedisSettings,
    "memory": MemorySettings,
}


def unsupported_key(db_type: str, key: str) -> str | None:
    """The message for ``key`` on a database of ``db_type`` when another type takes it."""
    takers = [name for name, model in DATABASE_TYPES.items() if key in model.model_fields]
    if not takers or db_type in takers:
        return None
    return f'not supported by type "{db_type}" (only by {", ".join(takers)})'
