"""GET /dashboard: a static page that charts ``/stats`` live.

The page, its script and its stylesheet ship inside the package
(``gateway/static``), so the dashboard needs no build step and no network
beyond the gateway. It holds no data: the script fetches ``/stats``, which
applies the gateway's authentication, so the page itself needs none. With
keys configured, ``/stats`` needs one with the ``observe`` scope: on a 401 or
403 the page asks for it and keeps it in the tab's ``sessionStorage`` only
(sent as ``Authorization: Bearer``, never in a URL).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

__all__ = ["router"]

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


@router.get("/dashboard/{asset}", include_in_schema=False)
async def dashboard_asset(asset: str) -> Response:
    media_type = _ASSETS.get(asset)
    if media_type is None:
        raise HTTPException(404, f"no dashboard asset {asset!r}")
    return Response(_read(asset), media_type=media_type, headers=_HEADERS)
