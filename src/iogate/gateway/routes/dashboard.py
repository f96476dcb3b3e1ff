"""GET /dashboard: a static page that charts ``/stats`` live.

The page, its script and its stylesheet ship inside the package
(``gateway/static``), so the dashboard needs no build step and no network
beyond the gateway. It holds no data: the script fetches ``/stats``, which
applies the gateway's authentication, so the page itself needs none. With
keys configured, ``/stats`` needs one with the ``observe`` scope: on a 401 or
403 the page asks for it and keeps it in the tab's ``sessionStorage`` only
(sent as ``Authorization: Bearer``, never in a URL).

History: the gateway samples its statistics every ``HISTORY_INTERVAL_S`` into
a ring of ``HISTORY_SAMPLES`` (five minutes; fixed memory: a few numbers per
resource per sample), and ``GET /dashboard/history`` returns it, so a page
opened cold draws the last minutes at once and then goes on live. With
``iogate serve --workers N`` (or ``[gateway] shared_state``) each worker's
ring samples the aggregate of every worker, as ``/stats`` answers with it,
so the page does not flip between workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from starlette.responses import Response

from iogate.gateway.auth import OBSERVE, Principal, principal_of
from iogate.gateway.responses import ORJSONResponse, declared

__all__ = [
    "HISTORY_INTERVAL_S",
    "HISTORY_SAMPLES",
    "StatsHistory",
    "router",
    "start_history",
    "stop_history",
]

logger = logging.getLogger("iogate.gateway")

HISTORY_INTERVAL_S = 1.0
HISTORY_SAMPLES = 300  # five minutes at one sample a second

router = APIRouter(tags=["observability"])

# Only these files are served; a name is never joined into a path.
_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

_HEADERS = {
    # Everything the page loads comes from the gateway itself.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    return resources.files("iogate.gateway").joinpath("static").joinpath(name).read_bytes()


@router.get("/dashboard", summary="Live dashboard (HTML)", response_class=Response)
async def dashboard() -> Response:
    return Response(_read("dashboard.html"), media_type="text/html", headers=_HEADERS)


@router.get(
    "/dashboard/history",
    summary="Recent statistics samples (the dashboard's history)",
    description=(
        "The last five minutes of per-resource statistics, one sample a second, "
        "oldest first; each sample has the shape of `/stats` with fewer fields. "
        "Needs a key with the `observe` scope (when keys are configured)."
    ),
    responses=declared(problem=(401, 403, 500)),
)
async def dashboard_history(
    request: Request, principal: Annotated[Principal, Depends(principal_of)]
) -> Response:
    principal.require(OBSERVE)
    history: StatsHistory | None = getattr(request.app.state, "stats_history", None)
    samples = [] if history is None else history.samples()
    return ORJSONResponse(
        {"interval_s": HISTORY_INTERVAL_S, "capacity": HISTORY_SAMPLES, "samples": samples},
        headers={"Cache-Control": "no-store"},
    )


@router.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(404, f"no dashboard asset {asset!r}")
    return Response(_read(asset), media_type=media_type, headers=_HEADERS)


# -- history ------------------------------------------------------------------------------

# The fields of a resource's /stats entry the page draws or shows.
_KEPT = ("type", "state", "count", "errors", "success_rate", "throughput_per_s")
_LATENCY = ("mean", "p50", "p95", "p99")
_POOL = ("size", "max_size", "in_use", "idle", "waiting")


def _compact(stats: Mapping[str, Any]) -> dict[str, Any]:
    entry = {key: stats.get(key) for key in _KEPT}
    latency = stats.get("latency_ms") or {}
    entry["latency_ms"] = {key: latency.get(key) for key in _LATENCY}
    pool = stats.get("pool") or {}
    if "max_size" in pool:
        entry["pool"] = {key: pool[key] for key in _POOL if key in pool}
    circuit = stats.get("circuit")
    if isinstance(circuit, Mapping):
        entry["circuit"] = {"state": circuit.get("state")}
    return entry


class StatsHistory:
    """A bounded ring of compact ``/stats`` samples, oldest first."""

    def __init__(self, capacity: int = HISTORY_SAMPLES) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)

    def add(self, uptime_s: float, stats: Mapping[str, Any]) -> None:
        """Keep one sample of ``orchestrator.get_stats()`` taken at ``uptime_s``."""
        self._ring.append(
            {
                "uptime_s": round(uptime_s, 3),
                **{
                    group: {name: _compact(s) for name, s in (stats.get(group) or {}).items()}
                    for group in ("databases", "apis")
                },
            }
        )

    def samples(self) -> list[dict[str, Any]]:
        return list(self._ring)

    async def run(
        self,
        stats: Callable[[], Mapping[str, Any]],
        uptime: Callable[[], float],
        interval: float = HISTORY_INTERVAL_S,
    ) -> None:
        """Sample until cancelled; a failing sample is logged and skipped."""
        while True:
            try:
                self.add(uptime(), stats())
            except Exception:  # the sampler must outlive a bad snapshot
                logger.exception("dashboard history: sampling failed")
            await asyncio.sleep(interval)


def start_history(
    app: FastAPI,
    started_at: float,
    *,
    stats: Callable[[], Mapping[str, Any]] | None = None,
) -> asyncio.Task[None]:
    """Sample ``stats()`` into ``app.state.stats_history``; cancel to stop.

    By default ``app.state.orchestrator``'s statistics, looked up at every
    sample, so one that is replaced (a config reload) is followed;
    ``uptime_s`` is on ``/stats``'s clock.
    """
    history = StatsHistory()
    app.state.stats_history = history
    return asyncio.create_task(
        history.run(
            stats or (lambda: app.state.orchestrator.get_stats()),
            lambda: time.time() - started_at,
        ),
        name="iogate-dashboard-history",
    )


async def stop_history(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
