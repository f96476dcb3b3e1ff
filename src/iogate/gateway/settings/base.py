"""What every settings table shares: strict keys, ``adaptive_concurrency``, URL checks."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from iogate.core.errors import ConfigError
from iogate.resilience.adaptive import AdaptiveConfig

__all__ = ["URL_SCHEMES", "AdaptiveConcurrencySettings", "Strict", "adaptive_switch", "check_url"]


class Strict(BaseModel):
    """A table whose every key is known: a misspelt one is a config error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AdaptiveConcurrencySettings(Strict):
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


def adaptive_switch(value: Any) -> Any:
    """``adaptive_concurrency = true`` is the table with its defaults; false is off."""
    if value is True:
        return {}
    if value is False:
        return None
    if not isinstance(value, dict | AdaptiveConcurrencySettings):
        raise ValueError("must be true, false or a table (min_limit, max_limit, ...)")
    return value


URL_SCHEMES = {
    "postgresql": ("postgresql", "postgres"),
    "mysql": ("mysql", "mariadb", "mysql+asyncmy"),
    "redis": ("redis", "rediss", "unix"),
}


def check_url(url: str, schemes: tuple[str, ...]) -> None:
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
