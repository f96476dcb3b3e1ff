"""Every complete Python example in docs/guide.md runs as written.

Blocks are read from the guide at collection time. A block preceded by
``<!-- fragment -->`` is not self-contained and is not run; one preceded by
``<!-- failing: a, b -->`` shows failures on purpose: those variables must
hold failed Results, and every other Result the example leaves must have
succeeded. Addresses written in the guide (PostgreSQL, Redis, the HTTP API)
are pointed at a fresh database, Redis database 15 and a local stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iogate.jobs.model import JobProgress
from tests.docs.conftest import substitute
from tests.docs.support import ROOT, Block, blocks, run_python_block

GUIDE = ROOT / "docs" / "guide.md"
EXAMPLES = [b for b in blocks(GUIDE) if b.lang == "python" and b.marker != "fragment"]


def failing_names(block: Block) -> set[str]:
    if not block.marker.startswith("failing:"):
        return set()
    return {name.strip() for name in block.marker.removeprefix("failing:").split(",")}


def test_the_guide_has_runnable_examples_for_each_part() -> None:
    sections = {block.section for block in EXAMPLES}
    for part in (
        "Database managers",
        "Transactions",
        "Redis and the memory store",
        "API managers",
        "The orchestrator",
    ):
        assert part in sections, sorted(sections)
    code = "\n".join(block.code for block in EXAMPLES)
    for name in ("add_api_manager", "execute_api_operation", "AsyncRedisManager", "readiness"):
        assert name in code, name


@pytest.mark.parametrize("block", EXAMPLES, ids=[f"line{b.line}" for b in EXAMPLES])
async def test_example_runs_as_written(
    block: Block,
    doc_addresses: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # SQLite files the examples create land here
    code = substitute(block.code, doc_addresses)
    run = await run_python_block(code, f"docs/guide.md:{block.line}")
    expected = failing_names(block)
    results = run.results()  # an exception would have failed the test already
    for name in expected:
        assert name in results, f"{block.where}: no Result named {name!r}"
        assert not results[name].success, f"{block.where}: {name} was meant to fail"
    failed = {
        name: (r.error_type, r.error)
        for name, r in results.items()
        if not r.success and name not in expected
    }
    assert failed == {}, block.where
    for name, value in run.namespace.items():  # a job the example waited for
        if isinstance(value, JobProgress) and name not in expected:
            assert (value.status, value.failed) == ("done", 0), f"{block.where}: {name}"
