"""Named ("dedicated") operations: seed 002's functions as an allow-list.

A named operation has a name, a fixed list of parameter names and one
target: a SQL statement on a database, a method + endpoint on an API, or a
Python coroutine. Callers give parameters by name; a missing or an extra
one is refused (``invalid_request``, HTTP 422) naming it, before any I/O.

Parameters may declare a type (``params = { id = "int", since = "datetime" }``,
in the order of ``$1, $2``; the list form ``params = ["id"]`` takes any JSON
value). A declared value is converted before any I/O (``"42"`` -> 42,
ISO 8601 text -> datetime, base64 -> bytes; :mod:`iogate.core.coerce`), and
one that cannot be is a 422 naming the parameter. Types are checked when the
operation is registered, so a typo fails at config load.

Declared two ways:

- in configuration, ``[operations.NAME]`` (DESIGN §4), loaded with
  :func:`load_operations`;
- in Python, with the :func:`operation` decorator::

      @operation("get_post", description="One post by id")
      async def get_post(orchestrator, post_id: str) -> Result: ...

  The first argument is the orchestrator; the others are the operation's
  parameters (those with a default are optional).

Each run emits an ``OperationEvent(kind="operation", operation=NAME)``, so
metrics and ``/stats`` show it under its own name. An optional cache
(``cache = {database, ttl, tags, invalidates}``) keeps successful outputs in
a key-value database: ``tags`` label an entry (``"post:{post_id}"`` is
formatted with the parameters), and a successful operation listing a tag in
``invalidates`` deletes every entry carrying that tag. An operation with
``invalidates`` is a write: it runs every time and its own output is never
cached. A cache that is down only costs the cache: the operation still runs.
"""

from __future__ import annotations

import hashlib
import inspect
import string
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import orjson

from iogate.backends.kv import RESERVED_PREFIX
from iogate.core import events
from iogate.core.coerce import PARAM_TYPES, CoercionError, convert, json_schema
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, InvalidRequestError, IogateError, ResourceNotFoundError
from iogate.core.events import OperationEvent, emit
from iogate.core.jsonable import jsonable
from iogate.core.result import Result

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = [
    "NamedOperation",
    "OperationCache",
    "OperationRegistry",
    "build_operation",
    "execute_named_operation",
    "load_operations",
    "operation",
    "python_operations",
    "register_operation",
    "registry_of",
    "settings_operations",
]

OperationFunction = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=OperationFunction)

# Under the reserved prefix: no key without admin can read or forge an entry
# through raw key-value operations (iogate.backends.kv.check_unreserved).
CACHE_PREFIX = f"{RESERVED_PREFIX}op:"
TAG_PREFIX = f"{RESERVED_PREFIX}tag:"
_BODYLESS_METHODS = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})


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


# Operations declared in Python with @operation, visible on every orchestrator.
python_operations = OperationRegistry()
operation = python_operations.operation

_registries: weakref.WeakKeyDictionary[AsyncOperationOrchestrator, OperationRegistry] = (
    weakref.WeakKeyDictionary()
)


def registry_of(orchestrator: AsyncOperationOrchestrator) -> OperationRegistry:
    """The orchestrator's operations (its own, then the @operation ones)."""
    registry = _registries.get(orchestrator)
    if registry is None:
        registry = _registries[orchestrator] = OperationRegistry(parent=python_operations)
    return registry


def register_operation(
    orchestrator: AsyncOperationOrchestrator,
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
    """Register a named operation on ``orchestrator`` (ConfigError if invalid).

    ``params`` is a list of names, or a mapping of names to types
    (:data:`iogate.core.coerce.PARAM_TYPES`) in positional order.
    """
    op = build_operation(
        name,
        database=database,
        api=api,
        query=query,
        method=method,
        endpoint=endpoint,
        params=params,
        cache=cache,
        description=description,
        function=function,
    )
    return registry_of(orchestrator).register(op)


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
    """The operation :func:`register_operation` registers (ConfigError if invalid)."""
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


def load_operations(orchestrator: AsyncOperationOrchestrator, settings: Mapping[str, Any]) -> None:
    """Register every ``[operations.NAME]`` (OperationSettings) once; idempotent."""
    registry = registry_of(orchestrator)
    if registry.loaded_settings:
        return
    for op in settings_operations(settings):
        registry.register(op)
    registry.loaded_settings = True


# -- running ------------------------------------------------------------------------


async def execute_named_operation(
    orchestrator: AsyncOperationOrchestrator,
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    deadline: Deadline | None = None,
) -> Result:
    """Run the operation called ``name``; never raises for a failure."""
    op = registry_of(orchestrator).get(name)
    if op is None:
        return Result.fail(f"unknown operation {name!r}", "not_found", operation=name)
    started = time.perf_counter()
    tracer = events.tracer
    span = tracer.start("operation", name) if tracer is not None else None
    try:
        values = op.check_params(params)
        result = await _cached_run(orchestrator, op, values, deadline or Deadline.never())
    except IogateError as exc:
        result = Result.from_exception(exc, resource=op.resource)
    except Exception as exc:  # a user function's bug is its own failed Result
        result = Result.from_exception(exc, resource=op.resource)
    except BaseException as exc:
        if tracer is not None:
            tracer.finish(span, None, exc)
        raise
    duration = time.perf_counter() - started
    result.operation = name
    result.resource = result.resource or op.resource
    emit(
        OperationEvent(
            resource=op.resource,
            kind="operation",
            backend=op.kind,
            operation=name,
            duration_s=duration,
            error_type=result.error_type,
        )
    )
    result = result.with_timing(duration * 1000, result.attempts)
    if tracer is not None:
        tracer.finish(span, result)
    return result


async def _cached_run(
    orchestrator: AsyncOperationOrchestrator,
    op: NamedOperation,
    values: dict[str, Any],
    deadline: Deadline,
) -> Result:
    cache = op.cache
    if cache is None:
        return await _run(orchestrator, op, values, deadline)
    if not cache.stores_output:
        # A write: repeated with the same parameters it must run again, so
        # its output is neither looked up nor kept; it only drops what it made stale.
        result = await _run(orchestrator, op, values, deadline)
        if result.success:
            await _invalidate(orchestrator, cache, values, deadline)
        return result
    key = _cache_key(op, values)
    hit = await orchestrator.execute_database_operation(
        cache.database, key, {"operation": "get", "key": key}, deadline=deadline
    )
    if hit.success and isinstance(hit.data, str):
        try:
            stored = orjson.loads(hit.data)
        except orjson.JSONDecodeError:
            stored = None
        if isinstance(stored, dict) and "data" in stored:
            return Result.ok(
                stored["data"],
                resource=op.resource,
                rows_affected=stored.get("rows_affected"),
                status_code=stored.get("status_code"),
            )
    result = await _run(orchestrator, op, values, deadline)
    if result.success:
        await _store(orchestrator, cache, key, values, result, deadline)
    return result


async def _run(
    orchestrator: AsyncOperationOrchestrator,
    op: NamedOperation,
    values: dict[str, Any],
    deadline: Deadline,
) -> Result:
    if op.database is not None:
        assert op.query is not None
        args = [values.get(p) for p in op.params]
        if op.param_types:
            args = _for_database(orchestrator, op.database, args)
        return await orchestrator.execute_database_operation(
            op.database, op.query, args, deadline=deadline
        )
    if op.api is not None:
        assert op.method is not None
        assert op.endpoint is not None
        if op.param_types:  # typed values back to their JSON form, now checked
            values = {k: jsonable(v) for k, v in values.items()}
        endpoint, rest = _fill_endpoint(op.endpoint, values)
        method = op.method.upper()
        if method in _BODYLESS_METHODS:
            query = {k: v for k, v in rest.items() if v is not None}
            return await orchestrator.execute_api_operation(
                op.api, method, endpoint, None, query or None, deadline=deadline
            )
        return await orchestrator.execute_api_operation(
            op.api, method, endpoint, rest or None, deadline=deadline
        )
    assert op.function is not None
    output = await op.function(orchestrator, **values)
    if isinstance(output, Result):
        return output
    return Result.ok(output, resource=op.resource)


def _for_database(
    orchestrator: AsyncOperationOrchestrator, database: str, args: list[Any]
) -> list[Any]:
    """Converted values as the database's driver binds them.

    asyncpg and asyncmy take dates, Decimals and bytes as they are; SQLite
    stores text, numbers and blobs, so dates become ISO 8601 text, Decimals
    their exact text and intervals seconds (the forms iogate answers with).
    """
    try:
        backend = orchestrator.get_manager(database).backend
    except ResourceNotFoundError:
        return args  # execute_database_operation reports the unknown name
    if backend == "postgresql":
        return args
    if backend == "mysql":
        return [str(v) if isinstance(v, uuid.UUID) else v for v in args]
    if backend == "sqlite":
        return [v if isinstance(v, bytes | bool | int | float) else jsonable(v) for v in args]
    return [jsonable(v) for v in args]


def _fill_endpoint(template: str, values: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``/posts/{post_id}`` filled with percent-encoded values; the rest returned.

    Each value is encoded as one path segment (``/`` included), so a
    parameter cannot add segments or climb out of the configured path.
    """
    used: set[str] = set()

    def segment(name: str) -> str:
        used.add(name)
        return quote(str(values.get(name, "")), safe="")

    out: list[str] = []
    for literal, name, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if name:
            out.append(segment(name))
    return "".join(out), {k: v for k, v in values.items() if k not in used}


def _cache_key(op: NamedOperation, values: Mapping[str, Any]) -> str:
    """``iogate:op:NAME:DEFINITION:{sorted params JSON}``.

    DEFINITION digests what the operation runs, so gateways sharing one
    Redis with different operations under the same name, or a query changed
    across a restart, never read each other's entries.
    """
    encoded = orjson.dumps(values, default=jsonable, option=orjson.OPT_SORT_KEYS).decode()
    return f"{CACHE_PREFIX}{op.name}:{_definition_digest(op)}:{encoded}"


def _definition_digest(op: NamedOperation) -> str:
    function = op.function
    target = f"{function.__module__}.{function.__qualname__}" if function is not None else None
    definition: list[Any] = [op.resource, op.query, op.method, op.endpoint, list(op.params), target]
    if op.param_types:  # a changed type may change what a cached value means
        definition.append(dict(op.param_types))
    return hashlib.sha256(orjson.dumps(definition)).hexdigest()[:16]


def _tag(template: str, values: Mapping[str, Any]) -> str:
    try:
        return template.format_map({k: v for k, v in values.items()})
    except (KeyError, ValueError, IndexError):
        return template


async def _store(
    orchestrator: AsyncOperationOrchestrator,
    cache: OperationCache,
    key: str,
    values: Mapping[str, Any],
    result: Result,
    deadline: Deadline,
) -> None:
    stored = {
        "data": result.data,
        "rows_affected": result.rows_affected,
        "status_code": result.status_code,
    }
    value = orjson.dumps(stored, default=jsonable).decode()
    await orchestrator.execute_database_operation(
        cache.database,
        key,
        {"operation": "set", "key": key, "value": value, "ttl": cache.ttl},
        deadline=deadline,
    )
    for tag in cache.tags:
        await orchestrator.execute_database_operation(
            cache.database,
            TAG_PREFIX + _tag(tag, values),
            {"operation": "sadd", "key": TAG_PREFIX + _tag(tag, values), "members": [key]},
            deadline=deadline,
        )


async def _invalidate(
    orchestrator: AsyncOperationOrchestrator,
    cache: OperationCache,
    values: Mapping[str, Any],
    deadline: Deadline,
) -> None:
    for template in cache.invalidates:
        tag_key = TAG_PREFIX + _tag(template, values)
        members = await orchestrator.execute_database_operation(
            cache.database, tag_key, {"operation": "smembers", "key": tag_key}, deadline=deadline
        )
        keys = [tag_key, *(members.data if members.success and members.data else [])]
        await orchestrator.execute_database_operation(
            cache.database, tag_key, {"operation": "delete", "keys": keys}, deadline=deadline
        )
