"""``iogate.toml``: reading, ``${VAR}`` interpolation and strict validation.

One model per table, each in the module named for it; ``loading`` reads a
file into ``Settings`` and renders every problem as one ``ConfigError``
line naming the key's path (``databases.main.max_conections: unknown key``).
"""

from __future__ import annotations

from iogate.gateway.settings.apis import ApiSettings, CircuitBreakerSettings, RetrySettings
from iogate.gateway.settings.base import AdaptiveConcurrencySettings
from iogate.gateway.settings.databases import (
    DatabaseSettings,
    MemorySettings,
    MySQLSettings,
    PostgreSQLSettings,
    RedisSettings,
    SQLiteSettings,
)
from iogate.gateway.settings.gateway import ApiKeySettings, GatewaySettings
from iogate.gateway.settings.loading import (
    DEFAULT_CONFIG,
    config_source,
    interpolate,
    load_settings,
    parse_settings,
    read_config_text,
)
from iogate.gateway.settings.root import Settings
from iogate.gateway.settings.sections import (
    JobsSettings,
    OperationCacheSettings,
    OperationSettings,
    TracingSettings,
)

__all__ = [
    "DEFAULT_CONFIG",
    "AdaptiveConcurrencySettings",
    "ApiKeySettings",
    "ApiSettings",
    "CircuitBreakerSettings",
    "DatabaseSettings",
    "GatewaySettings",
    "JobsSettings",
    "MemorySettings",
    "MySQLSettings",
    "OperationCacheSettings",
    "OperationSettings",
    "PostgreSQLSettings",
    "RedisSettings",
    "RetrySettings",
    "SQLiteSettings",
    "Settings",
    "TracingSettings",
    "config_source",
    "interpolate",
    "load_settings",
    "parse_settings",
    "read_config_text",
]
