"""The live dashboard: served by the gateway, and charting real load in a
real headless Chromium (Debian's ``chromium``, installed here when missing).

The page writes how many samples each chart holds into the DOM
(``data-points``, ``data-max``), so ``--dump-dom`` tells whether the charts
received data; ``--screenshot`` keeps a picture of them. Set
``IOGATE_DASHBOARD_SCREENSHOT=<path>`` to keep a copy of the screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings
from tests.conftest import unavailable
from tests.gateway.test_ready_proxy import serve_gateway
from tests.gateway.test_shared_state import Gateway, start_all

RESOURCES = ("pg", "main", "cache", "upstream")
MAX_REQUESTS = 20_000  # the load's hard bound; it normally stops with the browser
MAX_LOAD_SECONDS = 90.0


# -- served as static files ------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = parse_settings(
        f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "d.db"}"\n', env={}
    )
    with TestClient(create_app(settings), base_url="http://localhost") as test_client:
        yield test_client


def test_page_and_assets_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="dashboard/dashboard.js"' in page.text
    script = client.get("/dashboard/dashboard.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert 'fetch("stats"' in script.text
    style = client.get("/dashboard/dashboard.css")
    assert style.headers["content-type"].startswith("text/css")
    for name in ("dashboard.html", "..%2Fapp.py", "nope.js"):
        assert client.get(f"/dashboard/{name}").status_code == 404


def test_the_page_loads_nothing_from_elsewhere(client: TestClient) -> None:
    text = client.get("/dashboard").text + client.get("/dashboard/dashboard.js").text
    assert "http://" not in text
    assert "https://" not in text
    assert "//cdn" not in text


# -- in a real browser under load ------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root."""
    found = _find_chromium()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        unavailable("chromium is not installed and apt-get cannot install it (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired):
            break
        found = _find_chromium()
        if found:
            return found
    unavailable("chromium is not installed and `apt-get install chromium` failed")
    raise AssertionError("unreachable")


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """A real HTTP API on loopback answering after a few milliseconds."""
    rng = random.Random(3)

    async def item(request: web.Request) -> web.Response:
        # Simulated upstream latency, so the latency chart has a shape.
        await asyncio.sleep(rng.uniform(0.002, 0.015))
        return web.json_response({"id": request.match_info["n"]})

    app = web.Application()
    app.router.add_get("/items/{n}", item)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Load:
    """Bounded mixed traffic through the gateway until stopped."""

    def __init__(self, base: str, *, workers: int = 4) -> None:
        self.base = base
        self.workers = workers
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client = httpx.AsyncClient(base_url=base, timeout=10.0)

    def _request(self, n: int) -> tuple[str, dict[str, object]]:
        choice = n % 10
        if choice < 3:
            return "/database/execute", {
                "db_name": "pg",
                "query": "SELECT pg_sleep($1::float8 / 1000) IS NULL AS slept",
                "params": [n % 7],
            }
        if choice < 5:
            return "/database/execute", {"db_name": "main", "query": "SELECT ? AS n", "params": [n]}
        if choice < 7:
            return "/database/execute", {
                "db_name": "cache",
                "query": f"dash:{n % 50}",
                "params": {"operation": "set" if n % 2 else "get", "value": n, "ttl": 60},
            }
        if choice < 9:
            return "/api/execute", {"api_name": "upstream", "endpoint": f"/items/{n}"}
        return "/database/execute", {"db_name": "main", "query": "SELEC broken"}  # errors too

    async def _worker(self, start: int) -> None:
        n = start
        deadline = time.monotonic() + MAX_LOAD_SECONDS
        while not self._stop.is_set() and self.sent < MAX_REQUESTS:
            if time.monotonic() > deadline:
                return
            path, body = self._request(n)
            n += self.workers
            response = await self._client.post(path, json=body)
            self.sent += 1
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()


async def run_chromium(chromium: str, profile: Path, *args: str, timeout: float = 90) -> str:
    process = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"chromium did not finish within {timeout}s")
    if process.returncode != 0:
        pytest.fail(f"chromium exited {process.returncode}: {stderr.decode()[-2000:]}")
    return stdout.decode()


class Charts(HTMLParser):
    """``{resource: {chart: (points, max)}}`` and the body's data attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, tuple[int, float]]] = {}
        self.body: dict[str, str] = {}
        self._resource: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        elif tag == "article" and "data-resource" in values:
            self._resource = values["data-resource"]
            self.charts[self._resource] = {}
        elif tag == "canvas" and self._resource is not None:
            self.charts[self._resource][values.get("data-chart", "")] = (
                int(values.get("data-points", "0")),
                float(values.get("data-max", "0") or 0),
            )


@pytest.mark.timeout(900)  # the first run may install chromium
async def test_dashboard_charts_live_load_in_headless_chromium(
    chromium: str, tmp_path: Path, postgres_url: str, redis_url: str, upstream: str
) -> None:
    config = f"""
[databases.pg]
type = "postgresql"
url = "{postgres_url}"
max_connections = 4

[databases.main]
type = "sqlite"
path = "{tmp_path / "main.db"}"

[databases.cache]
type = "redis"
url = "{redis_url}"

[apis.upstream]
base_url = "{upstream}"
circuit_breaker = {{ failure_threshold = 5, recovery_timeout = 5 }}
"""
    async with serve_gateway(config, tmp_path) as base, Load(base) as load:
        page = f"{base}/dashboard?interval=300&history=30"
        # Virtual time runs the page's timers without waiting for them; the
        # fetches are real, and the page computes rates on the server's clock.
        dom = await run_chromium(
            chromium, tmp_path / "profile-dom", "--virtual-time-budget=8000", "--dump-dom", page
        )
        screenshot = tmp_path / "dashboard.png"
        await run_chromium(
            chromium,
            tmp_path / "profile-shot",
            "--virtual-time-budget=8000",
            "--window-size=1400,1250",
            f"--screenshot={screenshot}",
            page,
        )
    parsed = Charts()
    parsed.feed(dom)
    assert int(parsed.body.get("data-samples", "0")) >= 5, parsed.body
    assert parsed.body.get("data-errors") == "0"
    assert set(RESOURCES) <= set(parsed.charts), parsed.charts
    for resource in RESOURCES:
        points, largest = parsed.charts[resource]["throughput"]
        assert points >= 4, (resource, parsed.charts[resource])
        assert largest > 0, (resource, parsed.charts[resource])
        points, largest = parsed.charts[resource]["latency"]
        assert points >= 4
        assert largest > 0
    pool_points, pool_max = parsed.charts["pg"]["pool"]
    assert pool_points >= 4
    assert pool_max >= 1
    assert 'class="badge closed"' in dom  # the upstream's breaker
    assert parsed.body.get("data-workers") == "0"  # one process: no workers table
    assert '<section id="workers-section" hidden="">' in dom
    assert load.sent > 50
    assert load.statuses.get(200, 0) > 0
    assert load.statuses.get(400, 0) > 0  # the broken statements, charted as errors

    assert screenshot.exists()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a blank page is a few kB
    keep = os.environ.get("IOGATE_DASHBOARD_SCREENSHOT")
    if keep:
        with contextlib.suppress(OSError):
            Path(keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, keep)


class WorkerRows(HTMLParser):
    """The workers table: ``{pid: (count, [cell texts])}``, and whether it is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, tuple[int, list[str]]] = {}
        self.hidden: bool | None = None
        self._pid: int | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section" and values.get("id") == "workers-section":
            self.hidden = "hidden" in values
        elif tag == "tr" and "data-worker" in values:
            self._pid = int(values["data-pid"])
            self.rows[self._pid] = (int(values["data-count"]), [])
        elif tag == "td" and self._pid is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._pid is not None:
            self.rows[self._pid][1].append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self._pid = None


async def test_dashboard_lists_each_worker_under_workers_2(chromium: str, tmp_path: Path) -> None:
    body = f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "main.db"}"\n'
    (gateway,) = start_all([Gateway(tmp_path, "workers", body, "--workers", "2")])
    query = {"db_name": "main", "query": "SELECT 1 AS one"}
    # A new connection per request, so the kernel hands requests to both workers.
    fresh = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(base_url=gateway.base, timeout=5, limits=fresh) as client:
            sent = 0
            deadline = time.monotonic() + 60
            counts: list[int] = []
            while len(counts) < 2 or min(counts) == 0:  # until both served some
                for _ in range(20):
                    assert (await client.post("/database/execute", json=query)).status_code == 200
                sent += 20
                while True:  # until every request is counted (each publishes once a second)
                    stats = (await client.get("/stats")).json()
                    counts = [w["databases"]["main"]["count"] for w in stats["workers"]]
                    if len(counts) == 2 and sum(counts) == sent:
                        break
                    assert time.monotonic() < deadline, f"workers never both counted: {stats}"
                    await asyncio.sleep(0.1)  # polling the next publication
            expected = {w["pid"]: w["databases"]["main"]["count"] for w in stats["workers"]}
            page = f"{gateway.base}/dashboard?interval=300"
            dom = await run_chromium(
                chromium, tmp_path / "profile", "--virtual-time-budget=3000", "--dump-dom", page
            )
    finally:
        gateway.stop()
    rows = WorkerRows()
    rows.feed(dom)
    assert rows.hidden is False
    assert 'data-workers="2"' in dom
    assert {pid: count for pid, (count, _) in rows.rows.items()} == expected
    for pid, (count, cells) in rows.rows.items():
        assert cells[2] == str(pid)
        assert cells[4] == str(count)
        assert cells[5] == "100.0 %"
    assert 'id="workers-incomplete" class="note" hidden=""' in dom
    print(f"\n--workers 2: dashboard rows {expected} after {sent} requests")
