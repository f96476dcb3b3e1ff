"""Frozen, keyword-only configuration value objects with DESIGN §4 defaults.

These are the library's view of configuration; the gateway's TOML loader
(``iogate.gateway.settings``) validates a file and builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from iogate.core.errors import ConfigError

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_IDLE_CHECK_INTERVAL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_IDLE_TIME",
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_MIN_CONNECTIONS",
    "DEFAULT_STATEMENT_TIMEOUT",
    "DatabaseOptions",
]

DEFAULT_MIN_CONNECTIONS = 1
DEFAULT_MAX_CONNECTIONS = 20
DEFAULT_ACQUIRE_TIMEOUT = 5.0
DEFAULT_STATEMENT_TIMEOUT = 5.0
DEFAULT_MAX_IDLE_TIME = 300.0
DEFAULT_MAX_LIFETIME = 3600.0
DEFAULT_BUSY_TIMEOUT = 5.0
DEFAULT_IDLE_CHECK_INTERVAL = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DatabaseOptions:
    """Pool and behaviour settings shared by the SQL managers.

    ``statement_timeout=None`` means no server-side limit (a request deadline
    still bounds the call). ``max_rows=None`` and ``max_result_bytes=None``
    mean no cap. Both caps bound what is read, not only what is returned:
    reading stops at ``max_rows + 1`` rows (``truncated``), and a result
    larger than ``max_result_bytes`` fails with ``result_too_large``.

    ``idle_check_interval`` (PostgreSQL, MySQL): a pooled connection idle
    longer than this is checked with one round trip before it is handed out,
    and replaced if the server ended it (0 turns the check off).
    ``reset_session`` (PostgreSQL, MySQL): reset the session of every
    connection trusted code used before the next caller gets it, so
    ``SET search_path``, ``SET ROLE`` and the like do not carry over.
    """

    min_connections: int = DEFAULT_MIN_CONNECTIONS
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT
    statement_timeout: float | None = DEFAULT_STATEMENT_TIMEOUT
    max_idle_time: float = DEFAULT_MAX_IDLE_TIME
    max_lifetime: float = DEFAULT_MAX_LIFETIME
    read_only: bool = False
    allow_raw_sql: bool = True
    max_rows: int | None = None
    max_result_bytes: int | None = None
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT  # SQLite only
    synchronous: str = "NORMAL"  # SQLite only: NORMAL | FULL
    idle_check_interval: float = DEFAULT_IDLE_CHECK_INTERVAL
    reset_session: bool = False

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {self.max_connections}")
        if not 0 <= self.min_connections <= self.max_connections:
            raise ConfigError(
                f"min_connections must be between 0 and max_connections "
                f"({self.max_connections}), got {self.min_connections}"
            )
        for name in ("acquire_timeout", "max_idle_time", "max_lifetime", "busy_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.idle_check_interval < 0:
            raise ConfigError(
                f"idle_check_interval must be 0 (off) or positive, got {self.idle_check_interval}"
            )
        if self.statement_timeout is not None and self.statement_timeout <= 0:
            raise ConfigError(f"statement_timeout must be positive, got {self.statement_timeout}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"max_rows must be at least 1, got {self.max_rows}")
        if self.max_result_bytes is not None and self.max_result_bytes < 1:
            raise ConfigError(f"max_result_bytes must be at least 1, got {self.max_result_bytes}")
        if self.synchronous.upper() not in {"NORMAL", "FULL", "OFF"}:
            raise ConfigError(f"synchronous must be NORMAL, FULL or OFF, got {self.synchronous!r}")

    def with_max_connections(self, max_connections: int | None) -> DatabaseOptions:
        """These options with the seed's positional ``max_connections`` applied."""
        if max_connections is None:
            return self
        return replace(
            self,
            max_connections=max_connections,
            min_connections=min(self.min_connections, max_connections),
        )

    @classmethod
    def from_kwargs(cls, **options: Any) -> DatabaseOptions:
        """Build from keyword options, naming any unknown one."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"unknown database option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
                f" (known: {', '.join(sorted(known))})"
            )
        return cls(**options)
