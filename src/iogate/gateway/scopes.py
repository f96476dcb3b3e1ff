"""The scopes an API key may hold, and the one parser that accepts them.

Apart from :mod:`iogate.gateway.auth` so the settings can check scopes while
the config loads without importing what authenticates requests.
"""

from __future__ import annotations

__all__ = ["DB_LEVELS", "OBSERVE", "PLAIN_SCOPES", "SCOPE_FORMS", "parse_scope"]

OBSERVE = "observe"
# Scopes that name nothing, and those that name a resource (``*``: any).
PLAIN_SCOPES = frozenset({"batch", "jobs", OBSERVE})
DB_LEVELS = ("read", "write", "admin")
SCOPE_FORMS = (
    "db:NAME:read, db:NAME:write, db:NAME:admin, api:NAME, ops:NAME, batch, jobs, observe "
    "(NAME may be *)"
)


def parse_scope(scope: str) -> tuple[str, str | None]:
    """``(kind, name)`` of a configured scope: ``("db", "main")``, ``("batch", None)``.

    Raises ValueError naming the accepted forms for anything
    :meth:`Principal.allows` would never match (``db:main:reed``,
    ``db:main:*``, ``ops``), so a typo is refused when the config is
    loaded instead of silently granting nothing. ``name`` is ``"*"`` for
    a wildcard; whether it names a configured resource is the caller's
    check (``Settings``).
    """
    if scope in PLAIN_SCOPES:
        return scope, None
    parts = scope.split(":")
    kind = parts[0]
    valid = (kind == "db" and len(parts) == 3 and parts[2] in DB_LEVELS) or (
        kind in {"api", "ops"} and len(parts) == 2
    )
    if not valid or not parts[1].strip() or parts[1] != parts[1].strip():
        raise ValueError(f"{scope!r} is not a scope; scopes are {SCOPE_FORMS}")
    return kind, parts[1]
