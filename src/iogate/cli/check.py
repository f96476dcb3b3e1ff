"""``iogate check``: validate the config and ping every resource.

Loading the settings validates them (a ``ConfigError`` names the bad key's
dotted path). Each configured resource is then opened and pinged
concurrently, every step bounded by ``timeout``: the orchestrator's
``health_check`` assumes opened managers and ``ping`` opens an unopened
one outside its own timeout, so a resource whose host swallows packets
would stall the whole command. The result is a rich table and an exit code:
0 when every resource answered, 1 otherwise, 2 for an invalid config (one
line naming the key path, as ``iogate serve`` prints it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iogate.core.errors import ConfigError, IogateError, OperationTimeoutError
from iogate.core.redact import redact_url
from iogate.core.resource import Kind
from iogate.gateway.app import build_orchestrator, load_checked
from iogate.gateway.privileges import privilege_warnings
from iogate.gateway.settings import Settings

__all__ = ["DEFAULT_CHECK_TIMEOUT", "CheckRow", "check_resources", "render_rows", "run_check"]

DEFAULT_CHECK_TIMEOUT = 3.0
EXIT_CONFIG = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRow:
    """One resource's outcome: ``status`` is "up" or "down"."""

    resource: str
    type: str
    status: str
    latency_ms: float | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "up"


async def check_resources(
    settings: Settings,
    *,
    timeout: float = DEFAULT_CHECK_TIMEOUT,
    warnings: list[str] | None = None,
) -> list[CheckRow]:
    """Open and ping every configured resource; one row each, in config order.

    ``warnings`` (a list) receives a line per database whose untrusted SQL
    runs over a superuser account (:mod:`iogate.gateway.privileges`).
    """
    orchestrator = build_orchestrator(settings)
    targets = _targets(settings)
    try:
        jobs: list[Awaitable[CheckRow]] = [
            _check_one(name, manager, manager.initialize_pool, targets[name], timeout)
            for name, manager in orchestrator.databases.items()
        ]
        jobs += [
            _check_one(name, manager, manager.initialize_session, targets[name], timeout)
            for name, manager in orchestrator.apis.items()
        ]
        rows = list(await asyncio.gather(*jobs))
        if warnings is not None:
            warnings += await privilege_warnings(settings, orchestrator, timeout=timeout)
        return rows
    finally:
        await orchestrator.close()


async def _check_one(
    name: str,
    manager: Any,
    open_manager: Callable[[], Awaitable[None]],
    target: str,
    timeout: float,
) -> CheckRow:
    kind = str(manager.backend)
    latency_ms: float | None = None
    try:
        try:
            async with asyncio.timeout(timeout):
                await open_manager()
        except TimeoutError:
            raise OperationTimeoutError(f"{name}: could not connect within {timeout}s") from None
        started = time.perf_counter()
        await manager.ping(timeout)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
    except IogateError as exc:
        return CheckRow(resource=name, type=kind, status="down", latency_ms=None, detail=str(exc))
    except Exception as exc:  # a check reports every failure as a row, never a traceback
        detail = str(exc) or type(exc).__name__
        return CheckRow(resource=name, type=kind, status="down", latency_ms=None, detail=detail)
    detail = target
    if manager.kind is Kind.API:
        detail += f" (circuit {manager.health().breaker})"
    return CheckRow(resource=name, type=kind, status="up", latency_ms=latency_ms, detail=detail)


def _targets(settings: Settings) -> dict[str, str]:
    """What each resource points at, secrets masked, for the detail column."""
    targets: dict[str, str] = {}
    for name, db in settings.databases.items():
        if db.url:
            targets[name] = redact_url(db.url)
        else:
            targets[name] = db.path or "in-process"
    for name, api in settings.apis.items():
        targets[name] = redact_url(api.base_url)
    return targets


def render_rows(rows: list[CheckRow]) -> Table:
    table = Table(title="iogate check", title_justify="left")
    table.add_column("resource", style="bold")
    table.add_column("type")
    table.add_column("status")
    table.add_column("latency", justify="right")
    table.add_column("detail", overflow="fold")
    for row in rows:
        status = "[green]up[/]" if row.ok else "[bold red]DOWN[/]"
        latency = "-" if row.latency_ms is None else f"{row.latency_ms:.1f} ms"
        table.add_row(row.resource, row.type, status, latency, row.detail)
    return table


def run_check(
    config: Path | None,
    *,
    timeout: float = DEFAULT_CHECK_TIMEOUT,
    console: Console | None = None,
    errors: Console | None = None,
) -> int:
    """Validate ``config`` (the embedded default when None), ping, print; the exit code.

    A config error goes to ``errors`` (default: ``console``) as one line.
    """
    console = console or Console()
    try:
        settings = load_checked(config)
    except ConfigError as exc:
        line = escape(" ".join(str(exc).split()))
        (errors or console).print(
            f"[bold red]config error:[/] {line}", highlight=False, soft_wrap=True
        )
        return EXIT_CONFIG
    warnings: list[str] = []
    rows = asyncio.run(check_resources(settings, timeout=timeout, warnings=warnings))
    for line in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
    if not rows:
        console.print("config is valid; it declares no resources", highlight=False)
        return 0
    console.print(render_rows(rows))
    down = [row.resource for row in rows if not row.ok]
    if down:
        console.print(f"[bold red]down:[/] {', '.join(down)}", highlight=False)
        return 1
    console.print(f"all {len(rows)} resources are up", highlight=False)
    return 0
