"""API keys and scopes.

With ``[[gateway.api_keys]]`` configured, every operation and observability
endpoint needs ``Authorization: Bearer <key>``: 401 for a missing or unknown
key, 403 for a missing scope. Keys are compared as SHA-256 digests with
``hmac.compare_digest`` against every configured key, so neither the result
nor the time taken reveals which key or how much of it matched.

Scopes: ``db:NAME:read``, ``db:NAME:write``, ``db:NAME:admin``,
``api:NAME``, ``batch``, ``jobs``, ``ops:NAME``, ``observe``; ``*`` stands
for any name (``db:*:read``, ``ops:*``). ``admin`` implies write, ``write``
implies read. ``observe`` (``/stats``, ``/metrics``, ``/ready``'s details) is
implied by nothing: a monitoring system gets a key with ``observe`` alone,
and an operation key does not learn every resource's name and state.

Raw SQL from a key without ``admin`` is untrusted (guarded SQL,
:mod:`iogate.core.sqlguard`): :meth:`Principal.sql_guard` says under which
access it runs.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import HTTPException, Request
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.security.base import SecurityBase

from iogate.core.sqlguard import Access
from iogate.gateway.audit import audit_of
from iogate.gateway.scopes import OBSERVE, SCOPE_FORMS, parse_scope
from iogate.gateway.settings import ApiKeySettings, DatabaseSettings, Settings

__all__ = [
    "ANONYMOUS",
    "OBSERVE",
    "SCOPE_FORMS",
    "Authenticator",
    "Principal",
    "may_observe",
    "parse_scope",
    "principal_of",
]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a configured key's name and scopes (or anonymous)."""

    name: str
    scopes: frozenset[str]
    authenticated: bool = True

    def allows(self, scope: str) -> bool:
        if not self.authenticated:
            return True  # no keys configured: loopback-only gateway, everything allowed
        if scope in self.scopes:
            return True
        parts = scope.split(":")
        if scope.startswith("db:") and parts[-1] in _IMPLIED_BY:
            stronger = ":".join([*parts[:-1], _IMPLIED_BY[parts[-1]]])
            if self.allows(stronger):
                return True  # admin implies write, write implies read
        if len(parts) >= 2:
            wildcard = ":".join([parts[0], "*", *parts[2:]])
            if wildcard in self.scopes:
                return True
        return False

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            raise HTTPException(403, f"the key {self.name!r} lacks the scope {scope!r}")

    def can_write(self, database: str) -> bool:
        return self.allows(f"db:{database}:write")

    def sql_guard(self, database: str, settings: DatabaseSettings | None) -> Access | None:
        """The access this caller's raw SQL on ``database`` runs under.

        None (trusted, unguarded) for ``db:NAME:admin`` — and for everyone
        when no keys are configured (a loopback-only gateway). A
        ``read_only`` database caps every caller at READ.
        """
        if settings is not None and settings.read_only:
            return Access.READ
        if self.allows(f"db:{database}:admin"):
            return None
        return Access.WRITE if self.can_write(database) else Access.READ


_IMPLIED_BY = {"read": "write", "write": "admin"}

ANONYMOUS = Principal("anonymous", frozenset(), authenticated=False)


class Authenticator:
    def __init__(self, keys: list[ApiKeySettings]) -> None:
        self._keys: list[tuple[bytes, Principal]] = []
        for key in keys:
            if key.key is not None:
                digest = hashlib.sha256(key.key.encode()).digest()
            else:
                digest = bytes.fromhex(key.key_sha256 or "")
            self._keys.append((digest, Principal(key.name, frozenset(key.scopes))))

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        return cls(settings.gateway.api_keys)

    @property
    def principals(self) -> list[Principal]:
        return [principal for _, principal in self._keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> Principal:
        if not self._keys:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        for known, principal in self._keys:  # compare with all: constant time
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
        return found


class _BearerKey(SecurityBase):
    """The ``principal_of`` dependency, which is also the OpenAPI ``bearer``
    scheme: every route that depends on it is documented as needing a key
    (the docs' "Authorize" button, and clients generated from the schema,
    know to send one)."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(
            description="A key from [[gateway.api_keys]] (not needed when none is configured)"
        )
        self.scheme_name = "bearer"

    async def __call__(self, request: Request) -> Principal:
        # async: hashing a header is no work for a thread pool hop.
        cached: Principal | None = getattr(request.state, "principal", None)
        if cached is not None:
            return cached
        authenticator: Authenticator = request.app.state.authenticator
        principal = authenticator.authenticate(request.headers.get("authorization"))
        request.state.principal = principal
        audit_of(request).key = principal.name
        return principal


principal_of = _BearerKey()
"""FastAPI dependency: the caller, authenticated once per request (its name,
never the key, goes into the audit record)."""


def may_observe(request: Request) -> bool:
    """Whether the caller may see observability details; never refuses.

    For routes that answer everyone but tell more to an observer (``/ready``):
    True without configured keys (a loopback gateway), else only for a valid
    key with ``observe``. A missing or unknown key is not an error here, just
    no observer.
    """
    authenticator: Authenticator = request.app.state.authenticator
    if not authenticator.enabled:
        return True
    authorization = request.headers.get("authorization")
    if authorization is None:
        return False
    try:
        principal = authenticator.authenticate(authorization)
    except HTTPException:
        return False
    request.state.principal = principal
    audit_of(request).key = principal.name
    return principal.allows(OBSERVE)
