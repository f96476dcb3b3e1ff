"""The keyword options of ``add_database_manager`` and ``add_api_manager``, typed.

``**options: Unpack[...]`` (PEP 692) lets mypy and editors check each keyword:
a misspelt option (``max_conections=5``) is a type error instead of passing
silently through ``**Any``. At run time nothing changes: the managers refuse
unknown options as before (``ConfigError`` / ``TypeError``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from iogate.resilience.breaker import CircuitBreakerConfig
    from iogate.resilience.budget import RetryBudget
    from iogate.resilience.retry import RetryPolicy

__all__ = ["APIManagerOptions", "DatabaseManagerOptions"]


class DatabaseManagerOptions(TypedDict, total=False):
    """``add_database_manager`` options: SQL managers take the ``DatabaseOptions``
    fields; Redis and memory managers take the keys marked for them."""

    min_connections: int
    max_connections: int  # SQL and Redis
    acquire_timeout: float  # SQL and Redis
    statement_timeout: float | None
    max_idle_time: float
    max_lifetime: float
    read_only: bool
    allow_raw_sql: bool
    max_rows: int | None
    max_result_bytes: int | None
    busy_timeout: float  # SQLite
    synchronous: str  # SQLite: "NORMAL" | "FULL"
    idle_check_interval: float
    reset_session: bool
    auto_pipeline: bool  # Redis
    connect_timeout: float  # Redis
    command_timeout: float  # Redis
    max_in_flight: int  # Redis
    max_keys: int  # memory
    clock: Callable[[], float]  # memory


class APIManagerOptions(TypedDict, total=False):
    """``add_api_manager`` options: ``AsyncAPIManager``'s keyword arguments."""

    max_connections: int
    timeout: float
    headers: Mapping[str, str] | None
    retry: RetryPolicy | Mapping[str, Any] | bool | int | None
    circuit_breaker: CircuitBreakerConfig | Mapping[str, Any] | bool | None
    rate_limit: str | None
    rate_limit_storage: str | None
    retry_budget: RetryBudget | bool
    max_response_bytes: int
    max_json_depth: int
    verify_ssl: bool
    ca_bundle: str | None
    deadline_header: str | None
    clock: Callable[[], float]
    sleep: Callable[[float], Any]
    random: Callable[[], float]
