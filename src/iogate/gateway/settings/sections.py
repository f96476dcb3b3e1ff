"""``[operations.NAME]``, ``[tracing]`` and ``[jobs]``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from iogate.core.coerce import PARAM_TYPES
from iogate.gateway.settings.base import Strict

__all__ = ["JobsSettings", "OperationCacheSettings", "OperationSettings", "TracingSettings"]


class OperationCacheSettings(Strict):
    database: str = "cache"
    ttl: float = Field(default=60.0, gt=0)
    tags: list[str] = Field(default_factory=list)
    invalidates: list[str] = Field(default_factory=list)


class OperationSettings(Strict):
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


class TracingSettings(Strict):
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


class JobsSettings(Strict):
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
