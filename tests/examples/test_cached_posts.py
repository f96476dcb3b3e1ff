"""examples/cached_posts.py runs, against memory and against the real Redis."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cached_posts.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cached_posts_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _check(outcome: dict[str, object], *, expect_hits: bool) -> None:
    assert outcome["first"] == {"id": "p1", "title": "Hello"}
    assert outcome["fresh"] == {"id": "p1", "title": "Hello, edited"}
    if expect_hits:
        assert outcome["stale"] == {"id": "p1", "title": "Hello"}  # served from the cache
        assert outcome["database_reads"] == 2  # 20 concurrent misses -> 1 read, then 1 reload
    else:
        assert outcome["stale"] == {"id": "p1", "title": "Hello, edited"}


async def test_example_with_the_memory_cache(example: ModuleType, tmp_path: Path) -> None:
    _check(await example.main(None, tmp_path), expect_hits=True)


@pytest.mark.redis
async def test_example_with_redis(example: ModuleType, tmp_path: Path, redis_url: str) -> None:
    _check(await example.main(redis_url, tmp_path), expect_hits=True)


async def test_example_with_redis_down_still_answers(example: ModuleType, tmp_path: Path) -> None:
    outcome = await example.main(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    _check(outcome, expect_hits=False)
    assert outcome["cache"]["errors"] > 0
