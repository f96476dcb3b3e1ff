"""``/docs`` (Swagger UI) and ``/redoc``, served without a CDN.

FastAPI's own pages load Swagger UI and ReDoc from jsDelivr, so they are blank
without internet. The scripts, stylesheet and icon here come from the
``fastapi-offline`` package (which tracks Swagger UI 5 and ReDoc 2), served
under ``/docs/assets``. The pages reference everything relative to
themselves, so they also work behind a path prefix, and carry a Content
Security Policy that lets nothing load from elsewhere: ReDoc's sidebar
would otherwise fetch its vendor's logo from cdn.redoc.ly.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["DOCS_ASSETS", "install_docs"]

DOCS_ASSETS = "/docs/assets"

# Swagger UI's page has one inline script (its set-up call) and both tools
# inject inline styles; ReDoc's search runs in a blob: worker.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": DOCS_CSP, "X-Content-Type-Options": "nosniff"}


def install_docs(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their assets; create the app with both URLs None."""
    assets = DOCS_ASSETS.lstrip("/")  # relative to /docs and /redoc: "docs/assets/..."
    openapi = (app.openapi_url or "/openapi.json").lstrip("/")
    app.mount(
        DOCS_ASSETS,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            # No "valid" badge fetched from validator.swagger.io.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers.update(_HEADERS)
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(_HEADERS)
        return page
