"""``iogate.toml``: reading, ``${VAR}`` interpolation and strict validation.

This module and ``cli.py`` are the only places that read the environment.
Every problem is reported as a ConfigError whose message starts with the
key's dotted path, e.g. ``databases.main.max_conections: unknown key``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iogate.core.coerce import PARAM_TYPES
from iogate.core.errors import ConfigError
from iogate.resilience.adaptive import AdaptiveConfig

__all__ = [
    "DEFAULT_CONFIG",
    "ApiKeySettings",
    "ApiSettings",
    "DatabaseSettings",
    "GatewaySettings",
    "JobsSettings",
    "OperationSettings",
    "Settings",
    "config_source",
    "interpolate",
    "load_settings",
    "parse_settings",
    "read_config_text",
]

DEFAULT_CONFIG = """\
# Embedded default: used by `iogate serve` when no config file is given.
[gateway]
host = "127.0.0.1"
port = 8080

[databases.main]
type = "sqlite"
path = "iogate.db"

[databases.cache]
type = "memory"
"""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeySettings(_Strict):
    name: str
    key: str | None = None
    key_sha256: str | None = None
    scopes: list[str] = Field(default_factory=list)

    @field_validator("scopes")
    @classmethod
    def _scope_forms(cls, value: list[str]) -> list[str]:
        from iogate.gateway.auth import parse_scope  # it imports this module

        for scope in value:
            parse_scope(scope)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeySettings:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self


class GatewaySettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_batch_operations: int = Field(default=100, gt=0)
    # A Redis URL shared by every gateway process (docs/deployment.md): rate
    # limits counted across them, cache invalidations and breaker openings
    # broadcast. Empty: each process keeps its own state.
    shared_state: str = ""
    max_rows: int = Field(default=1000, gt=0)
    request_timeout: float = Field(default=30.0, gt=0)
    api_keys: list[ApiKeySettings] = Field(default_factory=list)
    # Limits on what a client controls (docs/security.md, "Limits").
    # Highest parameter position ($N, "N") a request may use; never above the
    # smallest database maximum (SQLite 32766, PostgreSQL 32767).
    max_params: int = Field(default=10_000, gt=0, le=32_766)
    # At most 200: the JSON encoder stops at 254 levels, envelopes included.
    max_json_depth: int = Field(default=32, gt=0, le=200)
    max_string_bytes: int = Field(default=1_048_576, gt=0)
    max_result_bytes: int = Field(default=16 * 1_048_576, gt=0)
    # Browsers: Host names the gateway answers (None: loopback names when
    # bound to loopback, any name otherwise) and CORS origins (none).
    allowed_hosts: list[str] | None = None
    cors_origins: list[str] = Field(default_factory=list)
    # Slow clients: seconds to receive a request's headers, its body, and
    # between requests on a kept-alive connection.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: float = Field(default=5.0, gt=0)
    # /ready fails only for what the gateway needs (databases and caches); an
    # API that is down or whose circuit is open is "degraded" unless this is true.
    ready_includes_apis: bool = False
    # SIGTERM: seconds in-flight requests get to finish before they are cancelled.
    shutdown_timeout: float = Field(default=30.0, gt=0)

    @field_validator("shared_state")
    @classmethod
    def _shared_state_url(cls, value: str) -> str:
        if value:
            _check_url(value, _URL_SCHEMES["redis"])  # the messages never echo the URL
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_entries(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "*" not in (entry.strip() for entry in value):
            from iogate.gateway.browser import HostAllowList  # it imports this module

            try:
                HostAllowList(value)
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("gateway.allowed_hosts: ")) from None
        return value

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


_URL_SCHEMES = {
    "postgresql": ("postgresql", "postgres"),
    "mysql": ("mysql", "mariadb", "mysql+asyncmy"),
    "redis": ("redis", "rediss", "unix"),
}


def _check_url(url: str, schemes: tuple[str, ...]) -> None:
    """A URL that means what it seems to; the message never echoes it (secrets).

    Drivers are lenient: asyncpg reads ``postgres:/127.0.0.1/db`` as the
    database ``127.0.0.1/db`` on the default host. So the form is checked
    here: ``scheme://`` written out, a port that parses, no blanks or
    control characters, a host (PostgreSQL alone may leave it to its
    defaults: ``postgresql:///db`` is libpq's local socket), and a path
    that is one database name (SQL) or a database number (Redis).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"url is not a valid URL ({exc})") from None
    if parts.scheme not in schemes:
        raise ValueError(
            f"url scheme must be one of {', '.join(s + '://' for s in schemes)}, "
            f"got {parts.scheme + '://' if parts.scheme else 'none'}"
        )
    shape = f"{parts.scheme}://"
    if not url.startswith(shape):
        raise ValueError(f"url must start with {shape} (the // is missing)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError("url contains blanks or control characters")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// url needs the socket's path")
        return
    if not parts.hostname and parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"url needs a host: {shape}HOST[:PORT]/...")
    path = parts.path.removeprefix("/")
    if parts.scheme in {"redis", "rediss"}:
        if path and not path.isdigit():
            raise ValueError("a redis url's path is a database number (redis://HOST:6379/0)")
    elif "/" in path:
        raise ValueError(f"url path must be one database name ({shape}HOST:PORT/DATABASE)")


class AdaptiveConcurrencySettings(_Strict):
    """``adaptive_concurrency``: ``true``, or a table of these keys (docs/reliability.md)."""

    enabled: bool = True
    min_limit: int = Field(default=1, ge=1)
    max_limit: int = Field(default=200, ge=1)
    initial_limit: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=100, ge=0)
    # Unset: a quarter of the unloaded latency, at most 1 s.
    max_queue_time: float | None = Field(default=None, gt=0)
    tolerance: float = Field(default=1.25, gt=1)

    @model_validator(mode="after")
    def _bounds(self) -> AdaptiveConcurrencySettings:
        try:
            self.config()
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("adaptive concurrency: ")) from None
        return self

    def config(self) -> AdaptiveConfig:
        return AdaptiveConfig(
            min_limit=self.min_limit,
            max_limit=self.max_limit,
            initial_limit=self.initial_limit,
            max_queue=self.max_queue,
            max_queue_time=self.max_queue_time,
            tolerance=self.tolerance,
        )


def _adaptive_switch(value: Any) -> Any:
    """``adaptive_concurrency = true`` is the table with its defaults; false is off."""
    if value is True:
        return {}
    if value is False:
        return None
    if not isinstance(value, dict | AdaptiveConcurrencySettings):
        raise ValueError("must be true, false or a table (min_limit, max_limit, ...)")
    return value


class DatabaseSettings(_Strict):
    type: Literal["postgresql", "sqlite", "mysql", "redis", "memory"]
    url: str | None = None
    # A least-privilege DSN for untrusted reads (postgresql, mysql).
    read_url: str | None = None
    path: str | None = None
    min_connections: int | None = Field(default=None, ge=0)
    max_connections: int | None = Field(default=None, gt=0)
    acquire_timeout: float | None = Field(default=None, gt=0)
    statement_timeout: float | None = Field(default=None, gt=0)
    max_idle_time: float | None = Field(default=None, gt=0)
    max_lifetime: float | None = Field(default=None, gt=0)
    idle_check_interval: float | None = Field(default=None, ge=0)  # postgresql, mysql
    reset_session: bool | None = None  # postgresql, mysql
    busy_timeout: float | None = Field(default=None, gt=0)
    synchronous: Literal["NORMAL", "FULL", "OFF"] | None = None
    read_only: bool = False
    allow_raw_sql: bool = True
    auto_pipeline: bool | None = None
    # Latency-driven admission in the gateway (off unless set; docs/reliability.md).
    adaptive_concurrency: AdaptiveConcurrencySettings | None = None

    _adaptive = field_validator("adaptive_concurrency", mode="before")(_adaptive_switch)

    @model_validator(mode="after")
    def _location(self) -> DatabaseSettings:
        if self.type == "sqlite":
            if self.path is None and self.url is None:
                raise ValueError("a sqlite database needs path")
        elif self.type in {"postgresql", "mysql", "redis"} and self.url is None:
            raise ValueError(f"a {self.type} database needs url")
        if self.url is not None and self.type in _URL_SCHEMES:
            _check_url(self.url, _URL_SCHEMES[self.type])
        if self.read_url is not None:
            if self.type not in {"postgresql", "mysql"}:
                raise ValueError(f"read_url is for postgresql and mysql, not {self.type}")
            _check_url(self.read_url, _URL_SCHEMES[self.type])
        return self

    def connection_string(self) -> str:
        return self.path or self.url or ""

    def manager_options(self, gateway: GatewaySettings | None = None) -> dict[str, Any]:
        """Keyword options for ``create_database_manager``: only those set.

        With ``gateway``, its result caps (``max_rows``, ``max_result_bytes``)
        become the SQL managers' own, so every path to the database reads
        within them (named operations, transactions, batch groups), not
        only the calls that pass them.
        """
        sql_keys = (
            "min_connections",
            "max_connections",
            "acquire_timeout",
            "statement_timeout",
            "max_idle_time",
            "max_lifetime",
            "idle_check_interval",
            "reset_session",
        )
        options: dict[str, Any] = {}
        if self.type in {"postgresql", "sqlite", "mysql"}:
            for key in sql_keys:
                value = getattr(self, key)
                if value is not None:
                    options[key] = value
            if self.type == "sqlite":
                if self.busy_timeout is not None:
                    options["busy_timeout"] = self.busy_timeout
                if self.synchronous is not None:
                    options["synchronous"] = self.synchronous
                if "max_connections" not in options:
                    options["max_connections"] = 5
                options["min_connections"] = min(
                    options.get("min_connections", 1), options["max_connections"]
                )
            options["read_only"] = self.read_only
            options["allow_raw_sql"] = self.allow_raw_sql
            if gateway is not None:
                options["max_rows"] = gateway.max_rows
                options["max_result_bytes"] = gateway.max_result_bytes
        elif self.type == "redis":
            if self.max_connections is not None:
                options["max_connections"] = self.max_connections
            if self.auto_pipeline is not None:
                options["auto_pipeline"] = self.auto_pipeline
        return options


class RetrySettings(_Strict):
    attempts: int = Field(default=3, ge=1, le=20)
    backoff_initial: float = Field(default=0.1, ge=0)
    backoff_max: float = Field(default=2.0, ge=0)


class CircuitBreakerSettings(_Strict):
    failure_threshold: int = Field(default=5, ge=1)
    recovery_timeout: float = Field(default=5.0, gt=0)
    failure_ratio: float | None = Field(default=None, gt=0, le=1)
    window: float | None = Field(default=None, gt=0)
    half_open_max_calls: int | None = Field(default=None, ge=1)


class ApiSettings(_Strict):
    base_url: str
    max_connections: int = Field(default=30, gt=0)
    timeout: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    retry: RetrySettings | None = None
    circuit_breaker: CircuitBreakerSettings | None = None
    rate_limit: str | None = None
    # HTTPS certificate checks; ca_bundle (a PEM file) replaces the system CAs.
    verify_ssl: bool = True
    ca_bundle: str | None = None
    # Latency-driven admission in the gateway (off unless set; docs/reliability.md).
    adaptive_concurrency: AdaptiveConcurrencySettings | None = None

    _adaptive = field_validator("adaptive_concurrency", mode="before")(_adaptive_switch)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        from iogate.backends.urls import BaseURL

        try:
            BaseURL.parse(value)  # the manager's own rule, at load time
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("base_url ")) from None
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            from limits import parse

            try:
                parse(value)  # what RateLimiter parses it with
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a limit such as '100/second' or '10 per minute'"
                ) from None
        return value


class OperationCacheSettings(_Strict):
    database: str = "cache"
    ttl: float = Field(default=60.0, gt=0)
    tags: list[str] = Field(default_factory=list)
    invalidates: list[str] = Field(default_factory=list)


class OperationSettings(_Strict):
    database: str | None = None
    api: str | None = None
    query: str | None = None
    method: str | None = None
    endpoint: str | None = None
    # Names, or names to types in positional order ({ id = "int" }; core/coerce.py).
    params: list[str] | dict[str, str] = Field(default_factory=list)
    cache: OperationCacheSettings | None = None
    description: str | None = None
    # Queued before other work when its resource is at its adaptive limit.
    interactive: bool = False

    @field_validator("params")
    @classmethod
    def _param_types(cls, value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        for name, param_type in value.items() if isinstance(value, dict) else ():
            if param_type not in PARAM_TYPES:
                raise ValueError(
                    f"{name}: unknown type {param_type!r} (one of: {', '.join(PARAM_TYPES)})"
                )
        return value

    @model_validator(mode="after")
    def _target(self) -> OperationSettings:
        if (self.database is None) == (self.api is None):
            raise ValueError("give exactly one of database or api")
        if self.database is not None and self.query is None:
            raise ValueError("a database operation needs query")
        if self.api is not None and (self.method is None or self.endpoint is None):
            raise ValueError("an api operation needs method and endpoint")
        return self


class TracingSettings(_Strict):
    """``[tracing]``: OpenTelemetry spans (needs ``pip install iogate[otel]``)."""

    enabled: bool = False
    # otlp: OTLP/HTTP to otlp_endpoint (else the OTEL_EXPORTER_OTLP_* variables);
    # console: span JSON on stdout; file: span JSON lines appended to `file`.
    exporter: Literal["otlp", "console", "file"] = Field(default="otlp", validate_default=True)
    otlp_endpoint: str | None = None
    file: str | None = Field(default=None, validate_default=True)
    service_name: str = "iogate"
    # SQL text (db.query.text) and API URLs (url.full); parameter values.
    record_statements: bool = False
    record_parameters: bool = False

    @field_validator("exporter")
    @classmethod
    def _installed(cls, exporter: str, info: ValidationInfo) -> str:
        if not info.data.get("enabled"):
            return exporter
        from importlib.util import find_spec

        needed = ["opentelemetry.sdk"]
        if exporter == "otlp":
            needed.append("opentelemetry.exporter.otlp.proto.http")
        for module in needed:
            try:
                found = find_spec(module) is not None
            except ModuleNotFoundError:
                found = False
            if not found:
                raise ValueError(f"needs {module} (pip install 'iogate[otel]')")
        return exporter

    @field_validator("file")
    @classmethod
    def _file_named(cls, file: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("enabled") and info.data.get("exporter") == "file" and not file:
            raise ValueError('required with exporter = "file"')
        return file


class JobsSettings(_Strict):
    """``[jobs]``: durable batch jobs (docs/jobs.md).

    ``store``: the SQL job store, ``sqlite:///PATH`` (embedded, the default)
    or ``postgresql://...`` (shared by gateways and workers on several
    machines). ``broker``: empty runs chunks inside the gateway; otherwise
    ``nats://HOST:PORT`` (JetStream) or ``amqp://USER:PASS@HOST:PORT/``
    (RabbitMQ), and ``iogate worker`` processes run them.
    """

    enabled: bool = True
    store: str = "sqlite:///iogate-jobs.db"
    broker: str = ""
    # The broker's stream (NATS) or queue (RabbitMQ) name.
    queue: str = Field(default="iogate-jobs", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    chunk_size: int = Field(default=250, ge=1, le=10_000)
    max_operations: int = Field(default=1_000_000, ge=1)
    # The body of POST /batch/jobs ([gateway] max_body_bytes is for the rest).
    max_body_bytes: int = Field(default=128 * 1_048_576, gt=0)
    # Chunks one runner (a worker, or the gateway without a broker) runs at once.
    worker_chunks: int = Field(default=2, ge=1, le=64)
    # Seconds the broker waits for a chunk's acknowledgement before it
    # redelivers it; a runner still working on the chunk extends it.
    ack_wait: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("store")
    @classmethod
    def _store_url(cls, store: str) -> str:
        if not store.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://...")
        return store

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, broker: str) -> str:
        if broker and not broker.startswith(("nats://", "amqp://", "amqps://")):
            raise ValueError("must be empty (in-process), nats://... or amqp://...")
        return broker


class Settings(_Strict):
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    databases: dict[str, DatabaseSettings] = Field(default_factory=dict)
    apis: dict[str, ApiSettings] = Field(default_factory=dict)
    operations: dict[str, OperationSettings] = Field(default_factory=dict)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        clash = sorted(set(self.databases) & set(self.apis))
        if clash:
            raise ValueError(f"names used for both a database and an api: {', '.join(clash)}")
        for name, op in self.operations.items():
            if op.database is not None and op.database not in self.databases:
                raise ValueError(f"operations.{name}.database: unknown database {op.database!r}")
            if op.api is not None and op.api not in self.apis:
                raise ValueError(f"operations.{name}.api: unknown api {op.api!r}")
            if op.cache is not None and op.cache.database not in self.databases:
                raise ValueError(
                    f"operations.{name}.cache.database: unknown database {op.cache.database!r}"
                )
        self._scope_names()
        return self

    def _scope_names(self) -> None:
        """Every scope names a configured database, API or operation (or ``*``)."""
        from iogate.gateway.auth import parse_scope
        from iogate.orchestrator.operations import python_operations

        known = {
            "db": ("database", set(self.databases)),
            "api": ("api", set(self.apis)),
            # @operation functions imported before the settings are loaded count too.
            "ops": ("operation", set(self.operations) | python_operations.names()),
        }
        for i, key in enumerate(self.gateway.api_keys):
            for j, scope in enumerate(key.scopes):
                kind, name = parse_scope(scope)
                if name is None or name == "*" or kind not in known:
                    continue
                what, names = known[kind]
                if name not in names:
                    configured = ", ".join(sorted(names)) or "none"
                    raise ValueError(
                        f"gateway.api_keys[{i}].scopes[{j}]: {scope!r} names no configured "
                        f"{what} (configured: {configured})"
                    )


# -- interpolation -------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of ``value``."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


# -- loading -------------------------------------------------------------------


def parse_settings(
    text: str, *, env: Mapping[str, str] | None = None, source: str = ""
) -> Settings:
    """Validate TOML text; ConfigError names the first bad key's path."""
    where = f"{source}: " if source else ""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}invalid TOML: {exc}") from None
    try:
        raw = interpolate(raw, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where + _describe(exc)) from None


def read_config_text(path: str | Path | None) -> str:
    """The TOML text of ``path``, or the embedded default when ``path`` is None."""
    if path is None:
        return DEFAULT_CONFIG
    file = Path(path)
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file ({exc.strerror})") from None


def config_source(path: str | Path | None) -> str:
    """How errors name the config: its path, or ``<embedded default>``."""
    return "<embedded default>" if path is None else str(path)


def load_settings(path: str | Path | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``path``, or the embedded default when ``path`` is None."""
    return parse_settings(read_config_text(path), env=env, source=config_source(path))


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ""
        for part in error["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            elif part != "__root__":
                loc += f".{part}" if loc else str(part)
        kind = error["type"]
        if kind == "extra_forbidden":
            message = "unknown key"
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            if (
                "input" in error
                and kind not in {"value_error"}
                and not isinstance(error["input"], dict | list)
            ):
                message += f" (got {error['input']!r})"
        lines.append(f"{loc}: {message}" if loc else message)
    # One line: the CLI prints it as is, a reload logs it as one record.
    return " ".join("; ".join(lines).split("\n"))
