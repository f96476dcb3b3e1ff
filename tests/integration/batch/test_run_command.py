"""``iogate run``: a 10,000-operation batch file with progress, summary and output."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from iogate.cli.run import run_batch_file as _run_batch_file
from iogate.gateway.settings import parse_settings


def run_batch_file(*args: Any, **kwargs: Any) -> int:
    # In a thread of its own, as the CLI's asyncio.run would own the process:
    # here it must not replace the event loop pytest-asyncio keeps for other tests.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_run_batch_file, *args, **kwargs).result()


SETTINGS = """
[databases.cache]
type = "memory"
"""


def test_ten_thousand_operations_with_a_correct_summary(tmp_path: Path) -> None:
    operations = [
        {
            "type": "database",
            "db_name": "cache",
            "query": f"k{i}",
            "params": {"operation": "set", "value": i},
        }
        for i in range(9_990)
    ]
    operations += [{"type": "database", "db_name": "nowhere", "query": "k"}] * 7
    operations += [{"type": "database", "db_name": "cache"}] * 3
    batch = tmp_path / "batch.json"
    batch.write_bytes(orjson.dumps({"operations": operations, "concurrency": 50}))
    out = io.StringIO()
    output = tmp_path / "results.json"
    status = run_batch_file(
        batch, parse_settings(SETTINGS, env={}), output, console=Console(file=out, width=100)
    )
    text = out.getvalue()
    assert status == 1
    assert "10000/10000" in text
    assert "succeeded" in text
    assert "9990" in text
    assert "failed: not_found" in text
    assert "failed: invalid_request" in text
    results = orjson.loads(output.read_bytes())
    assert len(results) == 10_000
    assert sum(r["success"] for r in results) == 9_990
    assert results[-1]["error"] == "operation 9999: missing field 'query'"


def test_unusable_file_exits_2(tmp_path: Path) -> None:
    out = io.StringIO()
    bad = tmp_path / "bad.json"
    bad.write_text('{"operations": 3}')
    status = run_batch_file(bad, parse_settings(SETTINGS, env={}), None, console=Console(file=out))
    assert status == 2
    assert "expected a list of operations" in out.getvalue()


def test_all_succeeded_exits_0(tmp_path: Path) -> None:
    batch = tmp_path / "ok.json"
    batch.write_bytes(
        orjson.dumps(
            [{"type": "database", "db_name": "cache", "query": "a", "params": {"operation": "get"}}]
        )
    )
    status = run_batch_file(
        batch, parse_settings(SETTINGS, env={}), None, console=Console(file=io.StringIO())
    )
    assert status == 0
