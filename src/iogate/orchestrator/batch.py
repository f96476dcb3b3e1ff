"""Mixed batches: the seed's ``execute_batch_operations(operations)``, done safely.

A batch is a list of operations in the seed's dict format::

    {"type": "database", "db_name": "main_db", "query": "...", "params": {...}}
    {"type": "api", "api_name": "ext", "method": "POST", "endpoint": "/e", "data": {...}}
    (``method`` defaults to GET, as on ``POST /api/execute``)
    {"type": "transaction", "db_name": "main_db", "queries": [{"query": ..., "params": ...}]}
    {"type": "operation", "name": "get_user", "params": {"id": 1}}

It returns one ``Result`` per operation, in request order. Operations run
concurrently (at most ``concurrency`` at a time) and one operation's failure
never affects another, except an operation that references a failed one
(see ``refs``): that one is skipped with ``dependency_failed``. A malformed
operation gets its own ``invalid_request`` Result naming the missing field.
One ``deadline`` bounds the whole batch.

Refused as a whole before anything runs (every Result ``invalid_request``,
the gateway answers 422): a forward or unknown reference, a duplicated step
id, and ``atomic=True`` on anything but SQL operations on one database,
since an HTTP call or a second database cannot be rolled back with it.

Efficiency without changing the outcome: independent key-value operations
on one Redis/memory database are sent as pipelines, and the same
INSERT/UPDATE repeated on one SQL database runs as one group on one
connection in one transaction (``execute_many`` when the manager offers
it). Each operation still gets its own Result; a SQL group that fails is
rolled back and re-run one statement at a time so the failure stays
isolated to its own operation.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iogate.core import events
from iogate.core.deadline import Deadline
from iogate.core.errors import ErrorType, InvalidRequestError, IogateError
from iogate.core.events import OperationEvent, emit
from iogate.core.params import MAX_PARAMS, check_params_limit
from iogate.core.result import Result
from iogate.core.sqlguard import Access, GuardFor
from iogate.orchestrator.refs import (
    FMT_KEY,
    REF_KEY,
    StepReferenceError,
    collect_references,
    is_step_id,
    resolve,
)

if TYPE_CHECKING:
    from iogate.backends.base import AsyncDatabaseManager
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = [
    "DEFAULT_CONCURRENCY",
    "HTTP_METHODS",
    "BatchRefusedError",
    "OnResult",
    "Step",
    "check_atomic",
    "execute_batch",
    "plan_batch",
    "run_transaction",
]

DEFAULT_CONCURRENCY = 10
MAX_CONCURRENCY = 1000
# Operations per pipeline / per SQL group: big enough to amortise round
# trips, small enough that several groups still run concurrently.
GROUP_SIZE = 1000
SQL_BACKENDS = frozenset({"postgresql", "sqlite", "mysql"})
KV_BACKENDS = frozenset({"redis", "memory"})
OPERATION_TYPES = ("database", "api", "transaction", "operation")
# An api step's method becomes a metric label: only these, before any event.
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_REQUIRED: dict[str, tuple[str, ...]] = {
    "database": ("db_name", "query"),
    "api": ("api_name", "endpoint"),  # method: GET when absent
    "transaction": ("db_name", "queries"),
    "operation": ("name",),
}
_GROUPABLE_SQL = re.compile(r"^\s*(INSERT|UPDATE)\b", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
# The outer deadline backstop fires a little after the deadline itself, so
# that managers, which honour the deadline, report their own timeouts first.
_DEADLINE_GRACE = 0.1

OnResult = Callable[[int, Result], None]


class BatchRefusedError(InvalidRequestError):
    """The batch as a whole is invalid; nothing in it ran."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One operation of a batch, validated but not resolved."""

    index: int
    kind: str
    spec: Mapping[str, Any]
    step_id: str | None = None
    depends_on: frozenset[int] = frozenset()
    error: Result | None = None  # malformed: this Result is its outcome

    @property
    def label(self) -> str:
        if self.kind == "api":
            method = self.spec.get("method")
            return method.upper() if isinstance(method, str) else "api"
        if self.kind == "operation":
            name = self.spec.get("name")
            return name if isinstance(name, str) else "operation"
        if self.kind == "transaction":
            return "transaction"
        params = self.spec.get("params")
        if isinstance(params, Mapping) and isinstance(params.get("operation"), str):
            return str(params["operation"])
        return "query"

    @property
    def resource(self) -> str | None:
        name = self.spec.get("api_name" if self.kind == "api" else "db_name")
        return name if isinstance(name, str) else None


# -- planning ---------------------------------------------------------------------


def plan_batch(operations: Sequence[Any], *, max_params: int = MAX_PARAMS) -> list[Step]:
    """Validate ``operations`` into steps; raise BatchRefusedError for the batch.

    A single malformed operation does not refuse the batch: its step carries
    the failed Result instead. Any JSON value is a valid input: a field of
    the wrong type makes its operation malformed, never an exception.
    """
    if isinstance(operations, str | bytes) or not isinstance(operations, Sequence):
        raise BatchRefusedError("operations must be a list of operation objects")
    ids: dict[str, int] = {}
    steps: list[Step] = []
    for index, raw in enumerate(operations):
        step_id = raw.get("id") if isinstance(raw, Mapping) else None
        if step_id is not None:
            if not is_step_id(step_id):
                raise BatchRefusedError(
                    f"operation {index}: id must be a name like 'user' (letters, digits, _, -), "
                    f"got {step_id!r}"
                )
            if step_id in ids:
                raise BatchRefusedError(
                    f"operation {index}: id {step_id!r} is already used by operation {ids[step_id]}"
                )
        try:
            refs = collect_references(raw, at=index, ids=ids) if isinstance(raw, Mapping) else []
        except StepReferenceError as exc:
            raise BatchRefusedError(str(exc)) from None
        if step_id is not None:
            ids[step_id] = index
        steps.append(_step(index, raw, step_id, frozenset(r.step for r in refs), max_params))
    return steps


def _step(
    index: int, raw: Any, step_id: str | None, depends_on: frozenset[int], max_params: int
) -> Step:
    def malformed(message: str, kind: str = "invalid") -> Step:
        failure = Result.fail(f"operation {index}: {message}", "invalid_request", operation=kind)
        return Step(index=index, kind=kind, spec={}, step_id=step_id, error=failure)

    if not isinstance(raw, Mapping):
        return malformed(f"must be an object, not {type(raw).__name__}")
    kind = raw.get("type")
    if kind is None:
        return malformed("missing field 'type'")
    if not isinstance(kind, str):
        return malformed(f"field 'type' must be a string, not {_json_type(kind)}")
    if kind not in _REQUIRED:
        return malformed(
            f"unknown type {kind[:40]!r} (expected one of {', '.join(OPERATION_TYPES)})"
        )
    for name in _REQUIRED[kind]:
        if raw.get(name) is None:
            return malformed(f"missing field {name!r}", kind)
    if kind == "api" and "method" not in raw:
        raw = {**raw, "method": "GET"}  # as POST /api/execute defaults it
    problem = _check_fields(kind, raw, max_params)
    if problem:
        return malformed(problem, kind)
    return Step(index=index, kind=kind, spec=raw, step_id=step_id, depends_on=depends_on)


def _check_fields(kind: str, raw: Mapping[str, Any], max_params: int) -> str | None:
    """Type checks on fields that are given literally (references resolve later).

    Names (``db_name``, ``api_name``, ``name``) and an api step's ``method``
    must be literal strings: they choose the resource and label its metrics
    before anything runs. A ``query`` may also be a reference, checked again
    once resolved.
    """
    for name in ("db_name", "api_name", "name"):
        if name in _REQUIRED[kind] and not isinstance(raw[name], str):
            return f"field {name!r} must be a string, not {_json_type(raw[name])}"
    if kind == "database":
        return _check_statement(raw, max_params)
    if kind == "api":
        method = raw["method"]
        if not isinstance(method, str):
            return f"field 'method' must be a string, not {_json_type(method)}"
        if not method.isascii() or method.upper() not in HTTP_METHODS:
            return f"field 'method' must be one of {', '.join(sorted(HTTP_METHODS))}"
        for name in ("params", "headers"):
            value = raw.get(name)
            if value is not None and not isinstance(value, Mapping):
                return f"field {name!r} must be an object, not {_json_type(value)}"
    if kind == "transaction":
        queries = raw["queries"]
        if not isinstance(queries, list) or not queries:
            return "field 'queries' must be a non-empty list"
        for position, item in enumerate(queries):
            if not isinstance(item, Mapping) or item.get("query") is None:
                return f"queries[{position}]: missing field 'query'"
            problem = _check_statement(item, max_params)
            if problem:
                return f"queries[{position}]: {problem}"
    if kind == "operation" and not isinstance(raw.get("params", {}), Mapping):
        return "field 'params' must be an object of named parameters"
    return None


def _check_statement(raw: Mapping[str, Any], max_params: int) -> str | None:
    """``query`` a string (or a reference), ``params`` an object or a list
    within ``max_params``; None when both are fine."""
    query = raw.get("query")
    if not isinstance(query, str) and not _is_reference(query):
        return f"field 'query' must be a string, not {_json_type(query)}"
    params = raw.get("params")
    if params is None or _is_reference(params):
        return None
    if not isinstance(params, Mapping | list):
        return f"field 'params' must be an object or a list, not {_json_type(params)}"
    try:
        check_params_limit(params, max_params)
    except IogateError as exc:
        return f"field 'params': {exc}"
    return None


def _is_reference(value: object) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and (REF_KEY in value or FMT_KEY in value)


def _json_type(value: object) -> str:
    """A value's type as JSON names it: what a client sent, not a Python class."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def check_atomic(orchestrator: AsyncOperationOrchestrator, steps: Sequence[Step]) -> str:
    """The one SQL database an atomic batch runs on, or BatchRefusedError."""
    databases: set[str] = set()
    for step in steps:
        if step.error is not None:
            raise BatchRefusedError(f"atomic batch refused: {step.error.error} (nothing ran)")
        if step.kind not in ("database", "transaction"):
            raise BatchRefusedError(
                f"atomic batch refused: operation {step.index} is of type {step.kind!r}; "
                "only SQL operations on one database can run in one transaction "
                "(an HTTP call cannot be rolled back)"
            )
        databases.add(str(step.spec["db_name"]))
    if len(databases) > 1:
        raise BatchRefusedError(
            "atomic batch refused: its operations target several databases "
            f"({', '.join(sorted(databases))}); one transaction spans one database"
        )
    if not databases:
        raise BatchRefusedError("atomic batch refused: it has no operations")
    (db_name,) = databases
    manager = orchestrator.databases.get(db_name)
    if manager is None:
        raise BatchRefusedError(f"atomic batch refused: unknown database {db_name!r}")
    if manager.backend not in SQL_BACKENDS:
        raise BatchRefusedError(
            f"atomic batch refused: {db_name!r} is a {manager.backend} database; "
            "only SQL databases support transactions here"
        )
    return db_name


# -- execution ----------------------------------------------------------------------


async def execute_batch(
    orchestrator: AsyncOperationOrchestrator,
    operations: Sequence[Any],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    atomic: bool = False,
    deadline: Deadline | None = None,
    max_rows: int | None = None,
    on_result: OnResult | None = None,
    group: bool = True,
    guard: GuardFor | None = None,
    max_params: int = MAX_PARAMS,
    finished: Mapping[int, Result] | None = None,
) -> list[Result]:
    """One Result per operation, in order; never raises for an operation failure.

    ``finished``: operations that already ran (a job's chunk delivered
    again), by index: they are not run again, their Results are returned as
    given and serve the references of the others; ``on_result`` is not
    called for them. Not with ``atomic``.

    ``on_result(index, result)`` is called as each operation finishes (for a
    progress display). ``group=False`` turns off pipelining/grouping.
    ``guard(db_name)`` gives the access under which the batch's raw SQL on
    that database runs as untrusted SQL (None: trusted); named operations are
    the config's own SQL and are never guarded. A statement with more than
    ``max_params`` parameters, or a higher position, is malformed.
    """
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InvalidRequestError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        )
    deadline = deadline or Deadline.never()
    try:
        steps = plan_batch(operations, max_params=max_params)
        db_name = check_atomic(orchestrator, steps) if atomic else None
    except BatchRefusedError as exc:
        refused = [Result.fail(str(exc), "invalid_request") for _ in operations]
        if on_result is not None:
            for index, result in enumerate(refused):
                on_result(index, result)
        return refused
    if finished and atomic:
        raise InvalidRequestError("an atomic batch runs whole: finished operations cannot be given")
    run = _BatchRun(orchestrator, steps, deadline, max_rows, on_result, guard or _trusted)
    if finished:
        run.prefill(finished)
    tracer = events.tracer
    span = tracer.start("batch", steps, atomic) if tracer is not None else None
    try:
        if db_name is not None:
            await run.atomic(db_name)
        else:
            await run.concurrent(concurrency, group)
    except BaseException as exc:
        if tracer is not None:
            tracer.finish(span, None, exc)
        raise
    results = run.collect()
    if tracer is not None:
        tracer.finish(span, results)
    return results


@dataclass(slots=True)
class _Group:
    """Independent operations sent to one resource together."""

    kind: str  # "kv" | "sql"
    db_name: str
    indices: list[int] = field(default_factory=list)


_Unit = int | _Group


class _BatchRun:
    def __init__(
        self,
        orchestrator: AsyncOperationOrchestrator,
        steps: list[Step],
        deadline: Deadline,
        max_rows: int | None,
        on_result: OnResult | None,
        guard: GuardFor,
    ) -> None:
        self.orchestrator = orchestrator
        self.guard = guard
        self.steps = steps
        self.deadline = deadline
        self.max_rows = max_rows
        self.on_result = on_result
        self.results: list[Result | None] = [None] * len(steps)
        # Only a referenced operation needs an event for others to wait on.
        referenced = {d for s in steps for d in s.depends_on}
        self.done = {i: asyncio.Event() for i in referenced}
        self.ids = {s.step_id: s.index for s in steps if s.step_id is not None}

    def prefill(self, finished: Mapping[int, Result]) -> None:
        """Results of operations that ran before; they are not run again."""
        for index, result in finished.items():
            if 0 <= index < len(self.results):
                self.results[index] = result
                event = self.done.get(index)
                if event is not None:
                    event.set()

    def finish(self, index: int, result: Result) -> None:
        if self.results[index] is not None:
            return
        self.results[index] = result
        event = self.done.get(index)
        if event is not None:
            event.set()
        if self.on_result is not None:
            self.on_result(index, result)

    def collect(self) -> list[Result]:
        return [
            r if r is not None else Result.fail("not run", "internal_error") for r in self.results
        ]

    # -- concurrent mode ----------------------------------------------------------

    async def concurrent(self, concurrency: int, group: bool) -> None:
        units: Iterator[_Unit] = iter(self._units(group))

        async def worker() -> None:
            # Units are taken in index order, and an operation only waits for
            # earlier ones, which some worker has already taken: no deadlock.
            for unit in units:
                if isinstance(unit, _Group):
                    await self._run_group(unit)
                else:
                    await self._run_step(self.steps[unit])

        workers = min(concurrency, len(self.steps)) or 1
        remaining = self.deadline.remaining()
        try:
            async with asyncio.timeout(None if remaining is None else remaining + _DEADLINE_GRACE):
                await asyncio.gather(*(worker() for _ in range(workers)))
        except TimeoutError:
            pass
        for step in self.steps:
            if self.results[step.index] is None:
                self.finish(step.index, self._fail(step, "the batch deadline passed", "timeout"))

    def _units(self, group: bool) -> list[_Unit]:
        singles: list[_Unit] = []
        groups: dict[tuple[str, ...], list[_Group]] = {}
        for step in self.steps:
            if self.results[step.index] is not None:  # prefilled: ran before
                continue
            key = self._group_key(step) if group else None
            if key is None:
                singles.append(step.index)
                continue
            chunks = groups.setdefault(key, [])
            if not chunks or len(chunks[-1].indices) >= GROUP_SIZE:
                chunks.append(_Group(kind=key[0], db_name=key[1]))
            chunks[-1].indices.append(step.index)
        units: list[_Unit] = list(singles)
        for chunks in groups.values():
            for chunk in chunks:
                # A group of one gains nothing; run it as itself.
                units.append(chunk if len(chunk.indices) > 1 else chunk.indices[0])
        units.sort(key=lambda u: u.indices[0] if isinstance(u, _Group) else u)
        return units

    def _group_key(self, step: Step) -> tuple[str, ...] | None:
        if step.error is not None or step.depends_on or step.kind != "database":
            return None
        db_name = step.spec["db_name"]
        manager = self.orchestrator.databases.get(db_name)
        if manager is None:
            return None
        query, params = step.spec["query"], step.spec.get("params")
        if manager.backend in KV_BACKENDS:
            if (
                isinstance(query, str)
                and isinstance(params, Mapping)
                and params.get("operation") not in ("pipeline", "transaction", None)
            ):
                return ("kv", db_name)
            return None
        if (
            manager.backend in SQL_BACKENDS
            and isinstance(query, str)
            and _GROUPABLE_SQL.match(query)
            and not _RETURNING.search(query)
        ):
            return ("sql", db_name, query)
        return None

    def _fail(self, step: Step, message: str, error_type: ErrorType) -> Result:
        return Result.fail(message, error_type, resource=step.resource, operation=step.label)

    async def _run_step(self, step: Step) -> None:
        if step.error is not None:
            self.finish(step.index, step.error)
            return
        for dependency in sorted(step.depends_on):
            await self.done[dependency].wait()
        for dependency in sorted(step.depends_on):
            upstream = self.results[dependency]
            if upstream is None or not upstream.success:
                reason = upstream.error_type if upstream is not None else "not run"
                self.finish(
                    step.index,
                    self._fail(
                        step,
                        f"skipped: operation {dependency}, which it references, failed ({reason})",
                        "dependency_failed",
                    ),
                )
                return
        if self.deadline.expired():
            self.finish(step.index, self._fail(step, "the batch deadline passed", "timeout"))
            return
        try:
            spec = resolve(step.spec, self.results, at=step.index, ids=self.ids)
            result = await self._dispatch(step.kind, spec)
        except IogateError as exc:
            result = Result.from_exception(exc, resource=step.resource, operation=step.label)
        except Exception as exc:  # one operation must never break the batch
            result = Result.from_exception(exc, resource=step.resource, operation=step.label)
        self.finish(step.index, result)

    async def _dispatch(self, kind: str, spec: Mapping[str, Any]) -> Result:
        orchestrator = self.orchestrator
        if kind == "database":
            return await orchestrator.execute_database_operation(
                _text(spec, "db_name"),
                _text(spec, "query"),
                spec.get("params"),
                deadline=self.deadline,
                max_rows=self.max_rows,
                guard=self.guard(_text(spec, "db_name")),
            )
        if kind == "api":
            return await orchestrator.execute_api_operation(
                _text(spec, "api_name"),
                _text(spec, "method"),
                _text(spec, "endpoint"),
                spec.get("data"),
                spec.get("params"),
                headers=spec.get("headers"),
                deadline=self.deadline,
            )
        if kind == "transaction":
            db_name = _text(spec, "db_name")
            return await run_transaction(
                orchestrator,
                db_name,
                spec["queries"],
                deadline=self.deadline,
                guard=self.guard(db_name),
            )
        from iogate.orchestrator.operations import execute_named_operation

        params = spec.get("params") or {}
        return await execute_named_operation(
            orchestrator, _text(spec, "name"), params, deadline=self.deadline
        )

    # -- groups ----------------------------------------------------------------------

    async def _run_group(self, group: _Group) -> None:
        steps = [self.steps[i] for i in group.indices]
        if self.deadline.expired():
            for step in steps:
                self.finish(step.index, self._fail(step, "the batch deadline passed", "timeout"))
            return
        manager = self.orchestrator.databases[group.db_name]
        try:
            if group.kind == "kv":
                await self._kv_group(manager, steps)
            else:
                await self._sql_group(manager, steps)
        except Exception as exc:  # a group failure is reported per operation
            for step in steps:
                self.finish(
                    step.index,
                    Result.from_exception(exc, resource=step.resource, operation=step.label),
                )

    async def _kv_group(self, manager: AsyncDatabaseManager, steps: list[Step]) -> None:
        commands = []
        for step in steps:
            params = dict(step.spec["params"])
            # The seed passes the key as the query; a pipeline entry has no query.
            params.setdefault("key", step.spec["query"])
            commands.append(params)
        started = time.perf_counter()
        outcome = await manager.execute_query(
            "pipeline",
            {"operation": "pipeline", "operations": commands},
            deadline=self.deadline,
            guard=self.guard(manager.name),
        )
        share = round((time.perf_counter() - started) * 1000 / len(steps), 3)
        data = outcome.data if isinstance(outcome.data, list) else None
        if outcome.success and data is not None and len(data) == len(steps):
            for step, value in zip(steps, data, strict=True):
                result = Result.ok(value, resource=manager.name, operation=step.label)
                result.duration_ms = share
                self.finish(step.index, result)
            return
        if outcome.error_type == "invalid_request" and data is None:
            # An entry was refused while parsing, before anything was sent:
            # run each alone, so only the bad one fails.
            for step in steps:
                await self._run_step(step)
            return
        if data is None or len(data) != len(steps):
            # The pipeline as a whole failed (connection): nothing is known
            # per operation, so each reports the pipeline's error.
            for step in steps:
                failure = Result.fail(
                    outcome.error or "pipeline failed",
                    outcome.error_type or "query_error",
                    resource=manager.name,
                    operation=step.label,
                )
                self.finish(step.index, failure)
            return
        # Some entries failed. A write never answers None, so a None slot on
        # a write is its failure; a read is re-run alone (reads are safe to repeat).
        for step, value in zip(steps, data, strict=True):
            if value is not None:
                result = Result.ok(value, resource=manager.name, operation=step.label)
                self.finish(step.index, result.with_timing(share))
            elif step.label in _KV_READS:
                await self._run_step(step)
            else:
                self.finish(
                    step.index,
                    Result.fail(
                        outcome.error or "pipeline entry failed",
                        outcome.error_type or "query_error",
                        resource=manager.name,
                        operation=step.label,
                    ),
                )

    async def _sql_group(self, manager: AsyncDatabaseManager, steps: list[Step]) -> None:
        query = steps[0].spec["query"]
        params_list = [step.spec.get("params") for step in steps]
        started = time.perf_counter()
        execute_many = getattr(manager, "execute_many", None)
        guard = self.guard(manager.name)
        results: list[Result] | None = None
        if execute_many is not None:
            results = await execute_many(query, params_list, deadline=self.deadline, guard=guard)
        else:
            results = await _in_one_transaction(manager, query, params_list, self.deadline, guard)
        if results is None:
            # The group rolled back: run each alone so a failure stays its own.
            for step in steps:
                await self._run_step(step)
            return
        share = (time.perf_counter() - started) * 1000 / len(steps)
        for step, result in zip(steps, results, strict=True):
            result.resource = manager.name
            result.duration_ms = round(share, 3)
            self.finish(step.index, result)
        emit(
            OperationEvent(
                resource=manager.name,
                kind="database",
                backend=manager.backend,
                operation="execute_many",
                duration_s=time.perf_counter() - started,
                error_type=None,
            )
        )

    # -- atomic mode ------------------------------------------------------------------

    async def atomic(self, db_name: str) -> None:
        manager = self.orchestrator.databases[db_name]
        failed_at: int | None = None
        outcome_unknown = False
        started = time.perf_counter()
        remaining = self.deadline.remaining()
        # The manager honours the deadline on every step (open, acquire, BEGIN,
        # statements, COMMIT); this backstop, as in concurrent mode, ends the
        # batch shortly after it even if some step did not.
        backstop = asyncio.timeout(None if remaining is None else remaining + _DEADLINE_GRACE)
        try:
            guard = self.guard(db_name)
            async with (
                backstop,
                manager.transaction(deadline=self.deadline, guard=guard) as tx,
            ):
                for step in self.steps:
                    step_started = time.perf_counter()
                    try:
                        spec = resolve(step.spec, self.results, at=step.index, ids=self.ids)
                        query = None if step.kind == "transaction" else _text(spec, "query")
                    except IogateError as exc:
                        result = Result.from_exception(exc, resource=db_name, operation=step.label)
                    else:
                        if query is None:
                            result = await _statements(tx, spec["queries"], db_name)
                        else:
                            result = await tx.execute_query(query, spec.get("params"))
                    result.resource = db_name
                    self.results[step.index] = result.with_timing(
                        (time.perf_counter() - step_started) * 1000
                    )
                    if not result.success:
                        failed_at = step.index
                        tx.failed = True
                        break
            committed = tx.status == "committed"
        except IogateError as exc:
            committed = False
            failure = Result.from_exception(exc, resource=db_name, operation="transaction")
            if failed_at is None:
                failed_at = next(
                    (s.index for s in self.steps if self.results[s.index] is None),
                    len(self.steps) - 1,
                )
                self.results[failed_at] = failure
        except TimeoutError:  # the backstop: a step outlived the deadline
            committed = False
            running = next((s.index for s in self.steps if self.results[s.index] is None), None)
            if failed_at is None and running is None:
                # Every statement had run: it was COMMIT that did not answer.
                outcome_unknown = True
            elif failed_at is None and running is not None:
                failed_at = running
                self.results[running] = Result.fail(
                    "the batch deadline passed",
                    "timeout",
                    resource=db_name,
                    operation="transaction",
                )
        emit(
            OperationEvent(
                resource=db_name,
                kind="database",
                backend=manager.backend,
                operation="transaction",
                duration_s=time.perf_counter() - started,
                error_type=None
                if committed
                else ("unknown_outcome" if outcome_unknown else "rolled_back"),
            )
        )
        if outcome_unknown:
            self._unknown_outcome(db_name)
            return
        if committed:
            for step in self.steps:
                done = self.results[step.index]
                self.results[step.index] = None
                self.finish(step.index, done or self._fail(step, "not run", "internal_error"))
            return
        culprit = failed_at if failed_at is not None else len(self.steps) - 1
        for step in self.steps:
            own = self.results[step.index]
            self.results[step.index] = None
            if step.index == culprit and own is not None and not own.success:
                self.finish(step.index, own)
            else:
                self.finish(
                    step.index,
                    self._fail(
                        step,
                        f"rolled back: operation {culprit} of the atomic batch failed",
                        "rolled_back",
                    ),
                )

    def _unknown_outcome(self, db_name: str) -> None:
        for step in self.steps:
            self.results[step.index] = None
            self.finish(
                step.index,
                self._fail(
                    step,
                    f"the batch deadline passed during COMMIT on {db_name!r}: "
                    "the transaction may or may not have been applied",
                    "unknown_outcome",
                ),
            )


def _trusted(db_name: str) -> Access | None:
    return None


_KV_READS = frozenset({"get", "exists", "ttl", "mget", "hget", "hgetall", "lrange", "smembers"})


def _text(spec: Mapping[str, Any], name: str) -> str:
    value = spec.get(name)
    if not isinstance(value, str):
        raise InvalidRequestError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


async def _in_one_transaction(
    manager: AsyncDatabaseManager,
    query: str,
    params_list: list[Any],
    deadline: Deadline,
    guard: Access | None,
) -> list[Result] | None:
    """Every statement on one connection in one transaction; None if rolled back."""
    results: list[Result] = []
    async with manager.transaction(deadline=deadline, guard=guard) as tx:
        for params in params_list:
            result = await tx.execute_query(query, params)
            if not result.success:
                break
            results.append(result)
    return results if tx.status == "committed" else None


async def _statements(tx: Any, queries: Sequence[Any], db_name: str) -> Result:
    """The statements of a transaction operation on ``tx``; one combined Result."""
    outputs: list[Any] = []
    affected = 0
    for position, item in enumerate(queries):
        if not isinstance(item, Mapping) or not isinstance(item.get("query"), str):
            return Result.fail(
                f"queries[{position}]: missing field 'query'",
                "invalid_request",
                resource=db_name,
                operation="transaction",
            )
        result: Result = await tx.execute_query(item["query"], item.get("params"))
        if not result.success:
            return Result.fail(
                f"statement {position} failed, transaction rolled back: {result.error}",
                result.error_type or "query_error",
                resource=db_name,
                operation="transaction",
            )
        outputs.append(result.data)
        affected += result.rows_affected or 0
    return Result.ok(outputs, resource=db_name, operation="transaction", rows_affected=affected)


async def run_transaction(
    orchestrator: AsyncOperationOrchestrator,
    db_name: str,
    queries: Sequence[Any],
    *,
    deadline: Deadline | None = None,
    guard: Access | None = None,
) -> Result:
    """Run ``queries`` in one transaction on ``db_name``: all or nothing.

    Success: ``data`` is a list with each statement's rows, ``rows_affected``
    their sum. Failure: nothing was committed; ``error`` names the statement.
    """
    manager = orchestrator.databases.get(db_name)
    if manager is None:
        return Result.fail(
            f"unknown database {db_name!r}", "not_found", resource=db_name, operation="transaction"
        )
    if manager.backend not in SQL_BACKENDS:
        return Result.fail(
            f"{db_name!r} is a {manager.backend} database; transactions need a SQL database",
            "invalid_request",
            resource=db_name,
            operation="transaction",
        )
    if not isinstance(queries, Sequence) or isinstance(queries, str) or not queries:
        return Result.fail(
            "queries must be a non-empty list", "invalid_request", operation="transaction"
        )
    started = time.perf_counter()
    try:
        async with manager.transaction(deadline=deadline, guard=guard) as tx:
            result = await _statements(tx, queries, db_name)
            if not result.success:
                tx.failed = True
        if result.success and tx.status != "committed":
            result = Result.fail(
                "transaction was rolled back",
                "query_error",
                resource=db_name,
                operation="transaction",
            )
    except IogateError as exc:
        result = Result.from_exception(exc, resource=db_name, operation="transaction")
    duration = time.perf_counter() - started
    emit(
        OperationEvent(
            resource=db_name,
            kind="database",
            backend=manager.backend,
            operation="transaction",
            duration_s=duration,
            error_type=result.error_type,
        )
    )
    return result.with_timing(duration * 1000)
