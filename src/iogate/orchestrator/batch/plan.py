"""Planning a batch: each operation validated into a :class:`Step`, before I/O.

Nothing here runs anything. :func:`plan_batch` turns the client's list into
steps (a malformed operation becomes a step that carries its own failed
Result; a batch whose references or ids are wrong is refused whole), and
:func:`check_atomic` says whether an atomic batch can run as one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iogate.core.errors import InvalidRequestError, IogateError
from iogate.core.params import MAX_PARAMS, check_params_limit
from iogate.core.result import Result
from iogate.orchestrator.refs import (
    FMT_KEY,
    REF_KEY,
    StepReferenceError,
    collect_references,
    is_step_id,
)

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator

__all__ = [
    "HTTP_METHODS",
    "OPERATION_TYPES",
    "SQL_BACKENDS",
    "BatchRefusedError",
    "Step",
    "check_atomic",
    "plan_batch",
    "spec_text",
]

SQL_BACKENDS = frozenset({"postgresql", "sqlite", "mysql"})
OPERATION_TYPES = ("database", "api", "transaction", "operation")
# An api step's method becomes a metric label: only these, before any event.
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_REQUIRED: dict[str, tuple[str, ...]] = {
    "database": ("db_name", "query"),
    "api": ("api_name", "endpoint"),  # method: GET when absent
    "transaction": ("db_name", "queries"),
    "operation": ("name",),
}


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


def spec_text(spec: Mapping[str, Any], name: str) -> str:
    """A resolved step's string field; InvalidRequestError if a reference
    made it something else."""
    value = spec.get(name)
    if not isinstance(value, str):
        raise InvalidRequestError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value
