"""What a browser may reach: the Host allow-list and CORS (pure ASGI).

DNS rebinding: a page on ``evil.example`` re-resolves its own name to
127.0.0.1 and then calls a loopback gateway from the operator's browser as
*its own origin*. CORS never applies (the request is same-origin), and a
gateway without keys trusts everyone who reaches it. The one thing such a
request cannot choose is the ``Host`` header: the browser sends the name in
the page's URL, ``evil.example``. So the gateway answers only the names it
is known by, before any route, key check or body read:

- ``allowed_hosts`` unset: the loopback names (``localhost``, ``127.0.0.1``,
  ``[::1]``, and the bind address itself) when bound to a loopback address;
  any name otherwise (a gateway reachable from the network has keys);
- a list replaces that: ``api.example.com``, ``*.example.com`` (any
  subdomain, not the name itself), ``name:port`` for one port only, ``"*"``
  for any name. A name without a port allows every port.

A name not in the list is answered 421 (Misdirected Request), a missing,
repeated or malformed ``Host`` 400, both as problem+json.

Starlette's ``TrustedHostMiddleware`` checks names the same way, but answers
``text/plain`` (every other refusal here is problem+json), redirects to
``www.`` and has no per-port entries; the check is a dozen lines, so it is
written here (docs/decisions.md).

CORS is Starlette's ``CORSMiddleware``, installed only when
``cors_origins`` lists origins: with none, a browser on another origin gets
no CORS header and its preflight a 405, so it can neither send a JSON body
nor read an answer. A refused preflight (foreign origin, method or header)
is answered 400 as problem+json rather than Starlette's plain text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from iogate.core.errors import ConfigError
from iogate.gateway.responses import problem

if TYPE_CHECKING:
    from iogate.gateway.settings import GatewaySettings

__all__ = [
    "CORS_ALLOWED_HEADERS",
    "CORS_EXPOSED_HEADERS",
    "CORS_METHODS",
    "LOOPBACK_HOSTS",
    "HostAllowList",
    "HostCheck",
    "HostCheckMiddleware",
    "ProblemCORSMiddleware",
    "allowed_hosts_for",
    "cors_options",
]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_ALLOWED_HEADERS = ("Authorization", "Content-Type", "X-Request-Id")
CORS_EXPOSED_HEADERS = ("X-Request-Id", "Retry-After")
CORS_MAX_AGE = 600

# A Host header: a bracketed IPv6 literal or a name, then an optional port.
# Applied to the lowercased header; anything else is malformed.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::([0-9]{1,5}))?")
_MAX_SHOWN = 100  # of a refused Host, echoed in the problem's detail
_MAX_REMEMBERED = 256  # accepted raw Host values kept for the fast path


class HostAllowList:
    """Which ``Host`` values the gateway answers; ``None`` entries: any.

    ``names`` match on any port, ``name_ports`` on one, ``suffixes``
    (``.example.com`` from ``*.example.com``) match subdomains on any port.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        names: set[str] = set()
        name_ports: set[tuple[str, str]] = set()
        suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower()
            if entry.startswith("*."):
                suffixes.append(entry[1:].rstrip("."))
                continue
            if ":" in entry and not entry.startswith("[") and entry.count(":") > 1:
                entry = f"[{entry}]"  # a bare IPv6 literal: ::1 -> [::1]
            parsed = _parse(entry)
            if parsed is None:
                raise ConfigError(f"gateway.allowed_hosts: {raw!r} is not a host name")
            name, port = parsed
            if port is None:
                names.add(name)
            else:
                name_ports.add((name, port))
        if not (names or name_ports or suffixes):
            raise ConfigError('gateway.allowed_hosts: empty; give host names, or "*" for any')
        self.names = frozenset(names)
        self.name_ports = frozenset(name_ports)
        self.suffixes = tuple(suffixes)

    def __repr__(self) -> str:
        shown = sorted(self.names) + sorted(f"{n}:{p}" for n, p in self.name_ports)
        shown += [f"*{s}" for s in self.suffixes]
        return f"<HostAllowList {shown}>"

    def allows(self, host: str) -> bool:
        """Whether a ``Host`` header value (``name[:port]``) is answered."""
        parsed = _parse(host.lower())
        if parsed is None:
            return False
        name, port = parsed
        if name in self.names or (port is not None and (name, port) in self.name_ports):
            return True
        return any(name.endswith(suffix) for suffix in self.suffixes)


def _parse(host: str) -> tuple[str, str | None] | None:
    """``(name, port)`` of a lowercased ``Host`` value; None when malformed."""
    match = _HOST.fullmatch(host)
    if match is None:
        return None
    name, port = match.group(1), match.group(2)
    if not name.startswith("["):
        name = name.rstrip(".")  # "localhost." is "localhost"
        if not name:
            return None
    return name, port


def allowed_hosts_for(gateway: GatewaySettings) -> HostAllowList | None:
    """The allow-list ``[gateway]`` asks for; None when any name is answered."""
    entries = gateway.allowed_hosts
    if entries is None:
        if not gateway.is_loopback():
            return None
        entries = [*LOOPBACK_HOSTS, gateway.host]
    if "*" in (entry.strip() for entry in entries):
        return None
    return HostAllowList(entries)


class HostCheck:
    """The Host allow-list applied to a request's headers.

    Accepted raw values are remembered (up to a bound), so a request pays a
    dictionary lookup, not a parse. Used by :class:`HostCheckMiddleware`, and
    by the body-limit middleware's single pass over the headers when no CORS
    layer has to sit between the two (the default).
    """

    __slots__ = ("accepted", "allowed")

    def __init__(self, allowed: HostAllowList) -> None:
        self.allowed = allowed
        self.accepted: set[bytes] = set()

    def refusal(self, headers: list[tuple[bytes, bytes]]) -> Response | None:
        """None when the request's one ``Host`` is allowed, else the answer."""
        host: bytes | None = None
        repeated = False
        for name, value in headers:
            if name == b"host":
                repeated = host is not None
                host = value
        if host is not None and not repeated and host in self.accepted:
            return None
        if host is None or repeated:
            what = "no Host header" if host is None else "more than one Host header"
            return problem(400, "Bad Request", f"the request has {what}")
        text = host.decode("latin-1")
        if _parse(text.lower()) is None:
            return problem(400, "Bad Request", "the Host header is not a host name")
        if self.allowed.allows(text):
            if len(self.accepted) < _MAX_REMEMBERED:
                self.accepted.add(host)
            return None
        shown = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
        return problem(
            421,
            "Misdirected Request",
            f"this gateway does not answer for the host {shown!r} (see [gateway] allowed_hosts)",
        )

    async def refuse(self, refusal: Response, scope: Scope, receive: Receive, send: Send) -> None:
        """Send ``refusal``; a WebSocket is closed (policy violation) instead."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await refusal(scope, receive, send)


class HostCheckMiddleware:
    """Refuse a request whose ``Host`` is not in the allow-list, before the app.

    Add it outside everything that authenticates, reads the body or routes.
    """

    def __init__(self, app: ASGIApp, *, check: HostCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.check.refusal(scope["headers"])
            if refusal is not None:
                await self.check.refuse(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS handling; a refused preflight is a problem document."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = bytes(response.body).decode("utf-8", errors="replace")
        return problem(
            400,
            "CORS preflight refused",
            f"{refused} (see [gateway] cors_origins)",
            headers={"Vary": response.headers.get("vary", "Origin")},
        )


def cors_options(gateway: GatewaySettings) -> dict[str, Any] | None:
    """Keyword arguments for :class:`ProblemCORSMiddleware`; None: no CORS."""
    # Browsers send an origin lowercased and without a trailing slash.
    origins = [origin.strip().rstrip("/").lower() for origin in gateway.cors_origins]
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_methods": CORS_METHODS,
        "allow_headers": CORS_ALLOWED_HEADERS,
        "expose_headers": CORS_EXPOSED_HEADERS,
        # Bearer keys travel in a header, never as cookies: no credentials.
        "allow_credentials": False,
        # Chrome asks before a public page calls a private address; a listed
        # origin is one the operator chose, so it may.
        "allow_private_network": True,
        "max_age": CORS_MAX_AGE,
    }
