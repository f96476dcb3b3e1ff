"""The named-operation registry: what an operation is, and where it is found.

A named operation (:class:`NamedOperation`) has a name, a fixed list of
parameter names and one target: a SQL statement on a database, a method +
endpoint on an API, or a Python coroutine. An :class:`OperationRegistry`
holds them by name and falls back to a parent registry on a miss.

Two kinds of registry exist:

- :data:`python_operations`, the module-level registry the :func:`operation`
  decorator fills at import time;
- ``orchestrator.operations``, one per orchestrator, created with
  ``python_operations`` as its parent: an orchestrator sees every
  ``@operation`` function (declared before or after it was created) plus the
  operations registered on it alone, which no other orchestrator sees.

This module imports nothing of the orchestrator (the layering in
pyproject.toml's import-linter contract); running an operation is
:mod:`iogate.orchestrator.operations`.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from iogate.core.coerce import PARAM_TYPES, CoercionError, convert, json_schema
from iogate.core.errors import ConfigError, InvalidRequestError

__all__ = [
    "NamedOperation",
    "OperationCache",
    "OperationFunction",
    "OperationRegistry",
    "build_operation",
    "operation",
    "python_operations",
    "settings_operations",
]

OperationFunction = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=OperationFunction)


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationCache:
    """Where and how long a named operation's output is kept.

    With ``invalidates`` the operation is a write: it always runs, its output
    is never kept (``ttl`` and ``tags`` then go unused), and a success deletes
    the entries carrying those tags.
    """

    database: str
    ttl: float
    tags: tuple[str, ...] = ()
    invalidates: tuple[str, ...] = ()

    @property
    def stores_output(self) -> bool:
        """Whether a success is kept and served again (not for a write that invalidates)."""
        return not self.invalidates


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedOperation:
    """One allow-listed operation (frozen; build with register_operation)."""

    name: str
    params: tuple[str, ...] = ()
    optional: frozenset[str] = frozenset()
    # Declared types by parameter name (those not named take any JSON value).
    param_types: Mapping[str, str] = field(default_factory=dict, hash=False)
    database: str | None = None
    api: str | None = None
    query: str | None = None
    method: str | None = None
    endpoint: str | None = None
    cache: OperationCache | None = None
    description: str | None = None
    function: OperationFunction | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        targets = [t for t in (self.database, self.api, self.function) if t is not None]
        if len(targets) != 1:
            raise ConfigError(
                f"operation {self.name!r}: give exactly one of database, api or a function"
            )
        if self.database is not None and not self.query:
            raise ConfigError(f"operation {self.name!r}: a database operation needs query")
        if self.api is not None and not (self.method and self.endpoint):
            raise ConfigError(
                f"operation {self.name!r}: an api operation needs method and endpoint"
            )
        if len(set(self.params)) != len(self.params):
            raise ConfigError(f"operation {self.name!r}: a parameter name is repeated")
        for param, param_type in self.param_types.items():
            if param not in self.params:
                raise ConfigError(
                    f"operation {self.name!r}: a type for unknown parameter {param!r}"
                )
            if param_type not in PARAM_TYPES:
                raise ConfigError(
                    f"operation {self.name!r}: parameter {param!r} has unknown type "
                    f"{param_type!r} (one of: {', '.join(PARAM_TYPES)})"
                )

    @property
    def kind(self) -> str:
        if self.database is not None:
            return "database"
        return "api" if self.api is not None else "python"

    @property
    def resource(self) -> str:
        return self.database or self.api or "python"

    def describe(self) -> dict[str, Any]:
        """What ``GET /operations`` shows (never the SQL: it is the server's business)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "resource": self.resource,
            "params": [
                {"name": p, "required": p not in self.optional, "type": self.param_types.get(p)}
                for p in self.params
            ],
            "description": self.description,
            "cached": self.cache is not None and self.cache.stores_output,
        }
        if self.kind == "api":
            out["method"] = self.method
        return out

    def check_params(self, params: Any) -> dict[str, Any]:
        """``params`` as a dict, or InvalidRequestError naming what is wrong."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidRequestError(
                f"operation {self.name!r}: parameters must be an object of named values"
            )
        missing = [p for p in self.params if p not in params and p not in self.optional]
        if missing:
            raise InvalidRequestError(
                f"operation {self.name!r}: missing parameter{'s' if len(missing) > 1 else ''} "
                + ", ".join(repr(p) for p in missing)
            )
        extra = sorted(str(k) for k in params if k not in self.params)
        if extra:
            raise InvalidRequestError(
                f"operation {self.name!r}: unexpected parameter{'s' if len(extra) > 1 else ''} "
                + ", ".join(repr(p) for p in extra)
                + f" (expected: {', '.join(self.params) or 'none'})"
            )
        values = dict(params)
        for param, param_type in self.param_types.items():
            if param in values:
                try:
                    values[param] = convert(param_type, values[param])
                except CoercionError as exc:
                    raise InvalidRequestError(
                        f"operation {self.name!r}: parameter {param!r}: {exc}"
                    ) from None
        return values

    def params_schema(self) -> dict[str, Any]:
        """The JSON Schema of a request body for this operation (OpenAPI)."""
        return {
            "title": f"{self.name} parameters",
            "type": "object",
            "properties": {p: json_schema(self.param_types.get(p)) for p in self.params},
            "required": [p for p in self.params if p not in self.optional],
            "additionalProperties": False,
        }


class OperationRegistry:
    """Named operations by name; lookups fall back to ``parent``."""

    def __init__(self, parent: OperationRegistry | None = None) -> None:
        self._operations: dict[str, NamedOperation] = {}
        self._parent = parent
        self.loaded_settings = False

    def __repr__(self) -> str:
        return f"<OperationRegistry {sorted(self.names())}>"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def register(self, op: NamedOperation, *, replace: bool = False) -> NamedOperation:
        if not replace and op.name in self._operations:
            raise ConfigError(f"an operation named {op.name!r} is already registered")
        self._operations[op.name] = op
        return op

    def get(self, name: str) -> NamedOperation | None:
        found = self._operations.get(name)
        if found is None and self._parent is not None:
            return self._parent.get(name)
        return found

    def names(self) -> set[str]:
        inherited = self._parent.names() if self._parent is not None else set()
        return inherited | set(self._operations)

    def all(self) -> list[NamedOperation]:
        found = (self.get(name) for name in sorted(self.names()))
        return [op for op in found if op is not None]

    def operation(
        self,
        name: str | None = None,
        *,
        description: str | None = None,
        cache: OperationCache | None = None,
    ) -> Callable[[F], F]:
        """Decorator registering ``async def fn(orchestrator, **params)``."""

        def decorator(function: F) -> F:
            params, optional = _signature_params(function)
            doc = inspect.getdoc(function)
            self.register(
                NamedOperation(
                    name=name or function.__name__,
                    params=params,
                    optional=optional,
                    function=function,
                    cache=cache,
                    description=description or (doc.splitlines()[0] if doc else None),
                ),
                replace=True,  # re-importing a module re-registers the same function
            )
            return function

        return decorator


def _signature_params(function: OperationFunction) -> tuple[tuple[str, ...], frozenset[str]]:
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(f"{function.__qualname__}: a named operation must be an async def")
    parameters = list(inspect.signature(function).parameters.values())
    if not parameters:
        raise ConfigError(
            f"{function.__qualname__}: the first parameter must receive the orchestrator"
        )
    names: list[str] = []
    optional: set[str] = set()
    for parameter in parameters[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigError(
                f"{function.__qualname__}: *args/**kwargs cannot be validated; name each parameter"
            )
        names.append(parameter.name)
        if parameter.default is not parameter.empty:
            optional.add(parameter.name)
    return tuple(names), frozenset(optional)


def build_operation(
    name: str,
    *,
    database: str | None = None,
    api: str | None = None,
    query: str | None = None,
    method: str | None = None,
    endpoint: str | None = None,
    params: Iterable[str] | Mapping[str, str] = (),
    cache: OperationCache | None = None,
    description: str | None = None,
    function: OperationFunction | None = None,
) -> NamedOperation:
    """A checked :class:`NamedOperation` (ConfigError if invalid).

    ``params`` is a list of names, or a mapping of names to types
    (:data:`iogate.core.coerce.PARAM_TYPES`) in positional order; for a
    function without ``params``, its signature gives them.
    """
    optional: frozenset[str] = frozenset()
    names = tuple(params)
    param_types = dict(params) if isinstance(params, Mapping) else {}
    if function is not None and not names:
        names, optional = _signature_params(function)
    return NamedOperation(
        name=name,
        params=names,
        optional=optional,
        param_types=param_types,
        database=database,
        api=api,
        query=query,
        method=method.upper() if method else None,
        endpoint=endpoint,
        cache=cache,
        description=description,
        function=function,
    )


def settings_operations(settings: Mapping[str, Any]) -> list[NamedOperation]:
    """The operations ``[operations.NAME]`` (OperationSettings by name) describe."""
    operations = []
    for name, spec in settings.items():
        cache = None
        if spec.cache is not None:
            cache = OperationCache(
                database=spec.cache.database,
                ttl=spec.cache.ttl,
                tags=tuple(spec.cache.tags),
                invalidates=tuple(spec.cache.invalidates),
            )
        operations.append(
            build_operation(
                name,
                database=spec.database,
                api=spec.api,
                query=spec.query,
                method=spec.method,
                endpoint=spec.endpoint,
                params=spec.params,
                cache=cache,
                description=spec.description,
            )
        )
    return operations


# Operations declared in Python with @operation. Every orchestrator's registry
# has this one as its parent, so a decorated function is seen by each of them,
# whether its module was imported before or after the orchestrator was created.
python_operations = OperationRegistry()
operation = python_operations.operation
