"""``/docs`` (Swagger UI) and ``/redoc`` work without internet.

Their scripts, styles and icon come from the installed ``fastapi-offline``
package, served under ``/docs/assets``. Checked twice: the pages name no
external URL and every asset they reference answers 200 from the gateway; and a real
headless Chromium, whose every host name but 127.0.0.1 fails to resolve,
renders the operations from ``/openapi.json``, while its network log shows
that nothing the page asked for left loopback (ReDoc's sidebar asks for a
logo on cdn.redoc.ly: the pages' Content-Security-Policy stops it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings
from tests.gateway.test_dashboard import chromium, run_chromium
from tests.gateway.test_ready_proxy import serve_gateway

__all__ = ["chromium"]  # the fixture, imported for this module's tests

DOC_PAGES = ("/docs", "/redoc")
# The page's inline script names these too: Swagger UI's spec URL and ReDoc's spec-url.
SPEC_REFERENCES = (re.compile(r"url: '([^']+)'"), re.compile(r'spec-url="([^"]+)"'))


class References(HTMLParser):
    """Every ``src``/``href`` a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def references(page: str) -> list[str]:
    parser = References()
    parser.feed(page)
    specs = [m.group(1) for pattern in SPEC_REFERENCES for m in pattern.finditer(page)]
    return parser.urls + specs


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(
        f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "d.db"}"\n', env={}
    )
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


@pytest.mark.parametrize("path", DOC_PAGES)
def test_the_page_names_no_external_url_and_every_asset_is_served(
    client: TestClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text
    assert "https://" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "img-src 'self' data:;" in policy  # ReDoc's remote logo is not loaded
    urls = references(page.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert any("openapi.json" in url for url in urls), urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme, f"{path} loads {url} from elsewhere"
        assert not parts.netloc, f"{path} loads {url} from elsewhere"
        asset = client.get(urljoin(f"http://localhost{path}", url))
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
    if path == "/docs":
        assert (
            client.get("/docs/assets/swagger-ui-bundle.js")
            .headers["content-type"]
            .startswith("text/javascript")
        )
        assert (
            client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
        )


def test_assets_are_only_the_packaged_files(client: TestClient) -> None:
    for path in ("/docs/assets/../app.py", "/docs/assets/%2e%2e/app.py", "/docs/assets/nope.js"):
        assert client.get(path).status_code == 404, path


# -- in a real browser without internet -------------------------------------------------


def page_requests(net_log: Path) -> list[str]:
    """URLs Chromium fetched for the page (its own background traffic excluded).

    Requests made for a page carry the page's site in their network isolation
    key; the browser's own (update checks, account probes) carry ``null`` or
    another site.
    """
    log = json.loads(net_log.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and str(params.get("network_isolation_key", "")).startswith(
            "http://127.0.0.1"
        ):
            urls.append(params["url"])
    return urls


@pytest.mark.timeout(600)  # the first run may install chromium
async def test_swagger_ui_and_redoc_render_in_chromium_with_no_network(
    chromium: str, tmp_path: Path
) -> None:
    config = f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "main.db"}"\n'
    async with serve_gateway(config, tmp_path) as base:
        rendered = {}
        for path in DOC_PAGES:
            name = path.strip("/")
            net_log = tmp_path / f"{name}-net.json"
            rendered[path] = await run_chromium(
                chromium,
                tmp_path / f"profile-{name}",
                # Offline: every host name except 127.0.0.1 fails to resolve.
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-features=AutofillServerCommunication",  # the browser's own
                f"--log-net-log={net_log}",
                "--virtual-time-budget=8000",
                "--dump-dom",
                f"{base}{path}",
            )
            fetched = page_requests(net_log)
            assert f"{base}{path}" in fetched
            assert f"{base}/openapi.json" in fetched, fetched
            elsewhere = [url for url in fetched if not url.startswith(f"{base}/")]
            assert elsewhere == [], f"{path} fetched from elsewhere: {elsewhere}"
    # Swagger UI drew one block per operation, ReDoc one section per operation.
    swagger = rendered["/docs"]
    for route in ("/database/execute", "/batch/execute", "/ready"):
        assert f'data-path="{route}"' in swagger, route
    redoc = rendered["/redoc"]
    assert 'id="tag/operations/operation/database_execute_database_execute_post"' in redoc
    assert 'id="tag/observability/operation/ready_ready_get"' in redoc
