"""``[gateway]``: the HTTP server's address, limits and API keys."""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator, model_validator

from iogate.core.errors import ConfigError
from iogate.gateway.browser import HostAllowList
from iogate.gateway.scopes import parse_scope
from iogate.gateway.settings.base import URL_SCHEMES, Strict, check_url

__all__ = ["ApiKeySettings", "GatewaySettings"]


class ApiKeySettings(Strict):
    name: str
    key: str | None = None
    key_sha256: str | None = None
    scopes: list[str] = Field(default_factory=list)

    @field_validator("scopes")
    @classmethod
    def _scope_forms(cls, value: list[str]) -> list[str]:

        for scope in value:
            parse_scope(scope)
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKeySettings:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key or key_sha256")
        return self


class GatewaySettings(Strict):
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
            check_url(value, URL_SCHEMES["redis"])  # the messages never echo the URL
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_entries(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "*" not in (entry.strip() for entry in value):
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
