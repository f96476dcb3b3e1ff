"""docs/http-api.md: every route documented, every curl example run as written.

The routes table is compared with the app's own routes, so a route added
without a line in the docs fails here. The examples' configuration is the
page's own ``toml`` block (section "Trying the examples"), served by a real
``iogate serve``; every ``bash`` block with a ``curl`` runs in page order.
A JSON block right after a ``bash`` block shows the answer of that block's
last ``curl`` and must match it (support.matches: abridged objects allowed,
timings ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.routing import APIRoute
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings
from tests.docs.support import (
    ROOT,
    blocks,
    curl_commands,
    free_port,
    gateway,
    matches,
    run_curl_block,
    table_first_column,
    with_port,
)

DOC = ROOT / "docs" / "http-api.md"
KEY = "doc-example-key-0123456789"


def served_routes(routes: list[Any], prefix: str = "") -> Iterator[str]:
    """``METHOD /path`` for every route the app answers (HEAD left out)."""
    for route in routes:
        if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            yield f"GET {prefix}{route.path}/{{file}}"
        elif isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield f"{method} {prefix}{route.path}"
        else:  # an included router (FastAPI >= 0.16x keeps them as one entry)
            inner = getattr(route, "original_router", None) or getattr(route, "app", None)
            context = getattr(route, "include_context", None)
            assert inner is not None, f"unknown kind of route: {route!r}"
            yield from served_routes(inner.routes, prefix + getattr(context, "prefix", ""))


def example_config() -> str:
    (config,) = [b for b in blocks(DOC) if b.lang == "toml" and b.section == "Trying the examples"]
    return config.code


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    settings = parse_settings(
        example_config().replace("${IOGATE_KEY}", KEY).replace('"iogate.db"', '"x.db"'), env={}
    )
    app = create_app(settings)
    served = set(served_routes(app.routes))
    documented = {cell.strip("`") for cell in table_first_column(DOC, "Routes")}
    assert len(served) >= 16, served
    assert served - documented == set(), "served but not in docs/http-api.md's Routes table"
    assert documented - served == set(), "in docs/http-api.md's Routes table but not served"


def test_every_route_has_an_example_or_a_section() -> None:
    text = DOC.read_text()
    commands = " ".join(
        call.command for b in blocks(DOC) if b.lang == "bash" for call in curl_commands(b.code)
    )
    for row in table_first_column(DOC, "Routes"):
        method, path = row.strip("`").split(" ", 1)
        head = path.split("{", 1)[0].rstrip("/")
        assert f"`{method} {path}`" in text
        assert f"localhost:8080{head}" in commands or f"## `{method} {path}`" in text, row


async def test_the_curl_examples_run_as_written(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "iogate.toml").write_text(with_port(example_config(), port))
    env = {"IOGATE_KEY": KEY}
    page = blocks(DOC)
    ran = 0
    problems: list[str] = []
    async with gateway(["--config", "iogate.toml"], cwd=tmp_path, port=port, env=env):
        for index, block in enumerate(page):
            if block.lang != "bash" or not curl_commands(block.code):
                continue
            calls = run_curl_block(with_port(block.code, port), env=env, cwd=tmp_path)
            ran += len(calls)
            for call in calls:
                if not call.ok():
                    problems.append(
                        f"{block.where}: {call.command[:90]}... answered {call.status} "
                        f"(expected {call.expected or '2xx'}): {call.body[:300]}"
                    )
            following = page[index + 1] if index + 1 < len(page) else None
            if following is not None and following.lang == "json":
                documented = json.loads(following.code)
                actual = json.loads(calls[-1].body)
                problems += [f"{following.where}: {p}" for p in matches(documented, actual)]
    assert problems == []
    assert ran >= 20, ran
