"""Which batch operations run together (orchestrator.batch.grouping): pure
planning, checked against stand-in databases that only have a backend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from iogate.orchestrator.batch import plan_batch
from iogate.orchestrator.batch.grouping import GROUP_SIZE, Group, group_key, plan_units


@dataclass(frozen=True)
class Database:
    backend: str


DATABASES = {"pg": Database("postgresql"), "kv": Database("redis"), "lite": Database("sqlite")}
INSERT = "INSERT INTO t (x) VALUES ($1)"


def sql(query: str, db: str = "pg", **extra: Any) -> dict[str, Any]:
    return {"type": "database", "db_name": db, "query": query, "params": [1], **extra}


def kv(key: str, operation: str = "set") -> dict[str, Any]:
    params = {"operation": operation, "value": 1}
    return {"type": "database", "db_name": "kv", "query": key, "params": params}


def units_of(operations: list[dict[str, Any]], **options: Any) -> list[Any]:
    return [
        u.indices if isinstance(u, Group) else u
        for u in plan_units(plan_batch(operations), DATABASES, **options)
    ]


def test_the_same_insert_on_one_database_is_one_group() -> None:
    assert units_of([sql(INSERT), sql(INSERT), sql(INSERT)]) == [[0, 1, 2]]


def test_groups_sit_at_their_first_step_among_the_others() -> None:
    operations = [
        kv("a", "get"),
        sql(INSERT),
        sql("SELECT 1"),
        sql(INSERT),
        kv("b"),
        sql(INSERT, db="lite"),
    ]
    # kv 0 and 4 pipeline together; the INSERTs on pg group; the SELECT
    # and the lone SQLite INSERT (a group of one) run as themselves.
    assert units_of(operations) == [[0, 4], [1, 3], 2, 5]


@pytest.mark.parametrize(
    "operation",
    [
        sql("SELECT 1"),
        sql("DELETE FROM t"),
        sql("INSERT INTO t (x) VALUES ($1) RETURNING id"),
        sql(INSERT, db="nowhere"),
        kv("k", "pipeline"),
        {"type": "database", "db_name": "kv", "query": "k"},  # no params: no operation
        {"type": "api", "api_name": "api", "endpoint": "/x"},
        {"type": "database", "db_name": "pg"},  # malformed
    ],
)
def test_what_runs_alone(operation: dict[str, Any]) -> None:
    (step,) = plan_batch([operation])
    assert group_key(step, DATABASES) is None


def test_a_step_that_references_another_runs_alone() -> None:
    operations = [sql(INSERT, id="first"), sql(INSERT, params=[{"$ref": "first.rows_affected"}])]
    assert units_of(operations) == [0, 1]


def test_different_statements_are_different_groups() -> None:
    other = "UPDATE t SET x = $1"
    assert units_of([sql(INSERT), sql(other), sql(INSERT), sql(other)]) == [[0, 2], [1, 3]]


def test_group_false_runs_everything_alone() -> None:
    assert units_of([sql(INSERT), sql(INSERT), kv("a"), kv("b")], group=False) == [0, 1, 2, 3]


def test_a_group_holds_at_most_group_size_steps() -> None:
    units = units_of([sql(INSERT)] * (GROUP_SIZE + 2))
    assert [len(u) for u in units] == [GROUP_SIZE, 2]
