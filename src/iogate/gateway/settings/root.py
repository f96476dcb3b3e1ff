"""``Settings``: the whole ``iogate.toml``, its tables and their cross-references."""

from __future__ import annotations

from pydantic import Field, model_validator

from iogate.gateway.scopes import parse_scope
from iogate.gateway.settings.apis import ApiSettings
from iogate.gateway.settings.base import Strict
from iogate.gateway.settings.databases import DatabaseSettings
from iogate.gateway.settings.gateway import GatewaySettings
from iogate.gateway.settings.sections import JobsSettings, OperationSettings, TracingSettings

__all__ = ["Settings"]


class Settings(Strict):
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
