"""Where a Redis manager points: its URL read once, its TLS context, its secrets.

A URL is read with redis-py's own ``parse_url``, so one URL means the same in
both connection modes and in redis-py. TLS: a ``rediss://`` URL, configured
with redis-py's query parameters (``ssl_ca_certs=/path/ca.pem``,
``ssl_cert_reqs=none|optional|required``, ``ssl_check_hostname``,
``ssl_certfile``/``ssl_keyfile`` for a client certificate). The certificate
and host name are verified by default. The context is built when the
manager is created: a missing CA file is a ``ConfigError`` then.

Nothing this module shows (``target``, ``where``, a cleaned message) carries
the URL's password.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.connection import (
    RedisSSLContext,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from iogate.core.errors import ConfigError
from iogate.core.redact import redact_text, redact_url, url_password

__all__ = ["RedisEndpoint"]

_TLS_QUERY_PARAMS = (
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_certfile",
    "ssl_keyfile",
)


class RedisEndpoint:
    """A parsed Redis URL: what to dial, how to log in, how to show it."""

    __slots__ = ("_secrets", "params", "target", "tls")

    def __init__(self, url: str) -> None:
        self.target = redact_url(url)
        try:
            # host, port, path, username, password, db, connection_class, ssl_*
            self.params: dict[str, Any] = dict(parse_url(url))
        except ValueError as exc:
            raise ConfigError(f"invalid redis url {self.target!r}: {exc}") from None
        self._secrets = [s for s in (url_password(url), self.params.get("password")) if s]
        self.tls = _tls_context(self.params, self.target)

    def __repr__(self) -> str:
        return f"<RedisEndpoint {self.target}>"

    @property
    def unix_path(self) -> str | None:
        if self.params.get("connection_class") is UnixDomainSocketConnection:
            return str(self.params["path"])
        return None

    @property
    def host(self) -> str:
        return str(self.params.get("host", "localhost"))

    @property
    def port(self) -> int:
        return int(self.params.get("port", 6379))

    def where(self) -> str:
        """``host:port`` or the socket path, for messages."""
        if "path" in self.params:
            return str(self.params["path"])
        return f"{self.host}:{self.port}"

    def clean(self, message: str) -> str:
        """``message`` with the URL's password hidden (a server may echo it)."""
        return redact_text(message, self._secrets)

    def handshake(self) -> list[tuple[Any, ...]]:
        """The commands that start a session: ``AUTH`` and ``SELECT`` as needed."""
        params = self.params
        steps: list[tuple[Any, ...]] = []
        if params.get("password"):
            user = params.get("username")
            steps.append(
                ("AUTH", user, params["password"]) if user else ("AUTH", params["password"])
            )
        if params.get("db"):
            steps.append(("SELECT", params["db"]))
        return steps

    @property
    def connection_class(self) -> type[aioredis.Connection]:
        cls: type[aioredis.Connection] = self.params.get("connection_class", aioredis.Connection)
        return cls

    def connection_kwargs(self, connect_timeout: float, command_timeout: float) -> dict[str, Any]:
        """redis.asyncio connection arguments: raw string replies, our timeouts."""
        return {k: v for k, v in self.params.items() if k != "connection_class"} | {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": command_timeout,
            "decode_responses": True,
            "encoding_errors": "replace",
        }


def _tls_context(params: Mapping[str, Any], where: str) -> ssl.SSLContext | None:
    """The client TLS context of a ``rediss://`` URL, its files read now.

    redis-py's ``RedisSSLContext`` builds it, so both modes share one reading
    of the ``ssl_*`` parameters. Its defaults: verify the certificate and the
    host name against the system CA store plus ``ssl_ca_certs``.
    """
    given = [key for key in _TLS_QUERY_PARAMS if key in params]
    if params.get("connection_class") is not SSLConnection:
        if given:
            raise ConfigError(f"redis url {where!r}: {', '.join(given)} need a rediss:// url (TLS)")
        return None
    try:
        return RedisSSLContext(
            keyfile=params.get("ssl_keyfile"),
            certfile=params.get("ssl_certfile"),
            cert_reqs=params.get("ssl_cert_reqs", "required"),
            ca_certs=params.get("ssl_ca_certs"),
            check_hostname=params.get("ssl_check_hostname", True),
        ).get()
    except redis_errors.RedisError as exc:  # an unknown ssl_cert_reqs
        raise ConfigError(f"redis url {where!r}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        files = [str(params[k]) for k in ("ssl_ca_certs", "ssl_certfile") if k in params]
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"redis url {where!r}: cannot load {' / '.join(files) or 'TLS files'}: {reason}"
        ) from exc
