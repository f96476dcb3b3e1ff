"""Named ("dedicated") operations on an orchestrator: seed 002's functions as an allow-list.

What an operation is, and the registries that hold them, are
:mod:`iogate.orchestrator.registry`; this module registers operations on an
orchestrator (``orchestrator.operations``) and runs them. Callers give
parameters by name; a missing or an extra one is refused
(``invalid_request``, HTTP 422) naming it, before any I/O.

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
a key-value database through :class:`iogate.cache.Cache` (one load per key
at a time, however many callers miss it together): ``tags`` label an entry
(``"post:{post_id}"`` is formatted with the parameters), and a successful
operation listing a tag in ``invalidates`` deletes every entry carrying that
tag. An operation with ``invalidates`` is a write: it runs every time and
its own output is never cached. A cache that is down only costs the cache:
the operation still runs.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import string
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from iogate.backends.kv import RESERVED_PREFIX
from iogate.cache import DEFAULT_TAG_PREFIX, cache_for
from iogate.core import events
from iogate.core.deadline import Deadline, deadline_error
from iogate.core.errors import IogateError, ResourceNotFoundError
from iogate.core.jsonable import jsonable
from iogate.core.recording import record
from iogate.core.result import Result
from iogate.orchestrator.registry import (
    NamedOperation,
    OperationCache,
    OperationFunction,
    OperationRegistry,
    build_operation,
    operation,
    python_operations,
    settings_operations,
)

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

# Under the reserved prefix: no key without admin can read or forge an entry
# through raw key-value operations (iogate.backends.kv.check_unreserved).
CACHE_PREFIX = f"{RESERVED_PREFIX}op:"
TAG_PREFIX = DEFAULT_TAG_PREFIX  # the Cache's tag sets: iogate:tag:TAG
_BODYLESS_METHODS = frozenset({"GET", "DELETE", "HEAD", "OPTIONS"})


def registry_of(orchestrator: AsyncOperationOrchestrator) -> OperationRegistry:
    """The orchestrator's operations (its own, then the @operation ones)."""
    return orchestrator.operations


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
    return orchestrator.operations.register(op)


def load_operations(orchestrator: AsyncOperationOrchestrator, settings: Mapping[str, Any]) -> None:
    """Register every ``[operations.NAME]`` (OperationSettings) once; idempotent."""
    registry = orchestrator.operations
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
    op = orchestrator.operations.get(name)
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
    # A copy of its own: a cached Result is shared by every caller it served.
    result = replace(result, operation=name, resource=result.resource or op.resource)
    # Counted from its event (the gateway's StatsRegistry), not in a manager's stats:
    # its statements were counted by the managers that ran them.
    record(None, result, started, op.resource, "operation", op.kind, name, result.attempts)
    if tracer is not None:
        tracer.finish(span, result)
    return result


async def _cached_run(
    orchestrator: AsyncOperationOrchestrator,
    op: NamedOperation,
    values: dict[str, Any],
    deadline: Deadline,
) -> Result:
    spec = op.cache
    manager = orchestrator.databases.get(spec.database) if spec is not None else None
    if spec is None or manager is None:
        # No cache, or its database is not (or no longer) registered: a cache
        # is never a dependency, so the operation runs uncached.
        return await _run(orchestrator, op, values, deadline)
    cache = cache_for(manager)
    if not spec.stores_output:
        # A write: repeated with the same parameters it must run again, so
        # its output is neither looked up nor kept; it only drops what it made stale.
        result = await _run(orchestrator, op, values, deadline)
        if result.success:
            for template in spec.invalidates:
                await cache.invalidate_tag(_tag(template, values))
        return result
    # The cache's own calls are bounded by its manager's timeouts, not by this
    # caller's deadline: the caller stops waiting at its deadline (a shared
    # load goes on for the other callers waiting on it).
    remaining = deadline.remaining()
    waiting = asyncio.timeout(remaining)
    try:
        async with waiting:
            return await cache.get_or_load(
                _cache_key(op, values),
                functools.partial(_run, orchestrator, op, values, deadline),
                ttl=spec.ttl,
                tags=[_tag(template, values) for template in spec.tags],
                encode=_cache_entry,
                decode=functools.partial(_cached_result, op.resource),
            )
    except TimeoutError:
        if not waiting.expired():
            raise  # the operation's own timeout error
        raise deadline_error(f"operation {op.name!r}", budget=remaining) from None


def _cache_entry(result: Result) -> dict[str, Any] | None:
    """What is kept of a result: a success's output, never a failure."""
    if not result.success:
        return None
    return {
        "data": result.data,
        "rows_affected": result.rows_affected,
        "status_code": result.status_code,
    }


def _cached_result(resource: str, stored: Any) -> Result | None:
    """The Result a kept entry stands for; None (a miss) for one of another shape."""
    if not isinstance(stored, dict) or "data" not in stored:
        return None
    return Result.ok(
        stored["data"],
        resource=resource,
        rows_affected=stored.get("rows_affected"),
        status_code=stored.get("status_code"),
    )


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
