"""Cutting jobs into chunks, moving references into a chunk, prefilled batches."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iogate import AsyncOperationOrchestrator
from iogate.core.result import Result
from iogate.jobs.chunks import IDEMPOTENCY_HEADER, idempotency_key, plan_chunks, prepare_chunk
from iogate.jobs.model import ChunkTask
from iogate.orchestrator.batch import BatchRefusedError, execute_batch
from iogate.orchestrator.refs import rebase


def op(ref: int | None = None) -> dict[str, Any]:
    params = [{"$ref": f"{ref}.data"}] if ref is not None else [1]
    return {"type": "database", "db_name": "main", "query": "SELECT ?", "params": params}


def test_independent_operations_cut_at_chunk_size() -> None:
    assert plan_chunks([op()] * 10, chunk_size=4) == [(0, 4), (4, 8), (8, 10)]


def test_a_reference_across_a_boundary_moves_the_boundary() -> None:
    ops = [op(), op(), op(), op(), op(1), op(), op()]  # 4 refers to 1
    # No boundary at 2, 3 or 4: the first chunk runs on to 5.
    assert plan_chunks(ops, chunk_size=2) == [(0, 5), (5, 7)]


def test_references_by_id_keep_steps_together() -> None:
    ops: list[Any] = [op() for _ in range(6)]
    ops[1] = {**op(), "id": "user"}
    ops[4] = {
        "type": "api",
        "api_name": "a",
        "method": "GET",
        "endpoint": {"$fmt": "/u/{user.data}"},
    }
    assert plan_chunks(ops, chunk_size=2) == [(0, 5), (5, 6)]


def test_a_chain_longer_than_the_chunk_limit_is_refused() -> None:
    ops = [op()] + [op(0) for _ in range(30)]
    with pytest.raises(BatchRefusedError, match="one chain of 31 operations"):
        plan_chunks(ops, chunk_size=2)
    assert plan_chunks(ops, chunk_size=4) == [(0, 31)]


def test_a_forward_reference_refuses_the_job() -> None:
    with pytest.raises(BatchRefusedError, match="does not run before it"):
        plan_chunks([op(1), op()], chunk_size=5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=60),
    st.integers(min_value=1, max_value=8),
)
def test_no_reference_ever_crosses_a_chunk(back: list[int], size: int) -> None:
    # Operation i refers back ``back[i]`` steps when that stays in the job.
    ops = [op(i - b) if 0 < b <= i else op() for i, b in enumerate(back)]
    try:
        chunks = plan_chunks(ops, chunk_size=size)
    except BatchRefusedError as exc:
        refusal = str(exc)
        assert "one chain" in refusal
        return
    assert chunks[0][0] == 0
    assert chunks[-1][1] == len(ops)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    chunk_of = {i: n for n, (s, e) in enumerate(chunks) for i in range(s, e)}
    for i, b in enumerate(back):
        if 0 < b <= i:
            assert chunk_of[i - b] == chunk_of[i]


def test_rebase_moves_index_references_only() -> None:
    value = {
        "params": [{"$ref": "251.data.0.id"}, {"$ref": "user.data"}],
        "endpoint": {"$fmt": "/x/{252.data}/{{literal}}/{user.id}"},
        "other": "251.data",
    }
    moved = rebase(value, 250)
    assert moved == {
        "params": [{"$ref": "1.data.0.id"}, {"$ref": "user.data"}],
        "endpoint": {"$fmt": "/x/{2.data}/{{literal}}/{user.id}"},
        "other": "251.data",
    }
    assert value["params"][0] == {"$ref": "251.data.0.id"}  # the input is unchanged
    assert rebase(value, 0) is value


def test_prepare_chunk_adds_an_idempotency_key_to_api_calls() -> None:
    api = {"type": "api", "api_name": "a", "method": "POST", "endpoint": "/x"}
    own = {**api, "headers": {"idempotency-key": "mine"}}
    prepared = prepare_chunk([op(), api, own], job_id="j1", start=500)
    assert "headers" not in prepared[0]
    assert prepared[1]["headers"] == {IDEMPOTENCY_HEADER: idempotency_key("j1", 501)}
    assert prepared[2]["headers"] == {"idempotency-key": "mine"}
    assert "headers" not in api  # not modified in place


def test_chunk_task_round_trips_and_refuses_junk() -> None:
    task = ChunkTask(job_id="abc", chunk=7)
    assert ChunkTask.decode(task.encode()) == task
    assert task.message_id == "abc.7"
    for junk in (b"", b"[]", b'{"job": 1, "chunk": 1}', b'{"job": "a", "chunk": -1}'):
        with pytest.raises(Exception, match="not a chunk task"):
            ChunkTask.decode(junk)


def test_result_from_dict_round_trips() -> None:
    result = Result(
        success=False,
        data=[{"a": 1}],
        error="boom",
        error_type="query_error",
        resource="main",
        rows_affected=2,
        status_code=502,
        headers={"x": "y"},
        last_insert_id=4,
    )
    assert Result.from_dict(result.to_dict()).to_dict() == result.to_dict()
    assert Result.from_dict({"success": False, "error_type": "nonsense"}).error_type == "unknown"


async def test_prefilled_operations_do_not_run_and_serve_references(tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        await orchestrator.add_database_manager("main", "sqlite", str(tmp_path / "p.db"))
        await orchestrator.execute_database_operation(
            "main", "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"
        )
        ops = [
            {"type": "database", "db_name": "main", "query": "INSERT INTO t (v) VALUES ('a')"},
            {
                "type": "database",
                "db_name": "main",
                "query": "SELECT ? AS seen",
                "params": [{"$ref": "0.data.0.n"}],
            },
        ]
        seen: list[int] = []
        earlier = Result.ok([{"n": 41}], resource="main")
        results = await execute_batch(
            orchestrator, ops, finished={0: earlier}, on_result=lambda i, r: seen.append(i)
        )
        assert results[0] is earlier
        assert results[1].data == [{"seen": 41}]
        assert seen == [1]
        rows = await orchestrator.execute_database_operation("main", "SELECT count(*) AS n FROM t")
        assert rows.data == [{"n": 0}]  # the prefilled INSERT did not run


def test_the_idempotency_key_marker_is_replaced_everywhere() -> None:
    marker = {"$idempotency_key": None}
    operations = [
        {"type": "database", "db_name": "m", "query": "INSERT ...", "params": [marker, 1]},
        {"type": "database", "db_name": "r", "query": marker, "params": {"operation": "set"}},
        {"type": "database", "db_name": "m", "query": "SELECT 1", "params": [{"a": marker}]},
    ]
    prepared = prepare_chunk(operations, job_id="j", start=10)
    assert prepared[0]["params"] == ["iogate-j-10", 1]
    assert prepared[1]["query"] == "iogate-j-11"
    assert prepared[2]["params"] == [{"a": "iogate-j-12"}]
    assert operations[0]["params"][0] is marker  # the stored operations are unchanged
