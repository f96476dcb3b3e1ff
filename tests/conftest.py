"""Shared fixtures: real servers, found or started, never mocked.

Each server is looked for at its ``IOGATE_TEST_*_URL``. PostgreSQL: when
nothing answers there but its binaries are installed, a throwaway cluster is
started in a temporary directory. When neither works the tests skip with
the reason, and with ``IOGATE_REQUIRE_SERVICES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from iogate import AsyncPostgreSQLManager, AsyncSQLiteManager, DatabaseOptions

POSTGRES_URL = os.environ.get(
    "IOGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("IOGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MYSQL_URL = os.environ.get("IOGATE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVICES = os.environ.get("IOGATE_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> None:
    """Skip, or fail when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"IOGATE_REQUIRE_SERVICES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def port_open(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_throwaway_postgres() -> tuple[str, Path] | None:
    """initdb + pg_ctl in a temp dir; None when the binaries are absent."""
    candidates = (
        sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if Path("/usr/lib/postgresql").exists()
        else []
    )
    bindir = next((d for d in reversed(candidates) if (d / "initdb").exists()), None)
    if bindir is None and shutil.which("initdb"):
        bindir = Path(shutil.which("initdb") or "").parent
    if bindir is None:
        return None
    datadir = Path(tempfile.mkdtemp(prefix="iogate-pg-"))
    port = free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(datadir, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-o",
            f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1",
            "-l",
            str(datadir / "server.log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run_as,
            str(bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "test",
        ],
        check=True,
        capture_output=True,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/test", datadir


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if port_open(POSTGRES_URL, 5432):
        yield POSTGRES_URL
        return
    try:
        started = _start_throwaway_postgres()
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable(f"no PostgreSQL at {POSTGRES_URL} and a throwaway one failed to start: {exc}")
        return
    if started is None:
        unavailable(f"no PostgreSQL at {POSTGRES_URL} and no PostgreSQL binaries installed")
        return
    url, datadir = started
    try:
        yield url
    finally:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "pg_ctl", "-D", str(datadir), "stop", "-m", "fast"]
            if os.geteuid() == 0
            else ["pg_ctl", "-D", str(datadir), "stop", "-m", "fast"],
            capture_output=True,
        )
        shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not port_open(REDIS_URL, 6379):
        unavailable(f"no Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture(scope="session")
def mysql_url() -> str:
    if not port_open(MYSQL_URL, 3306):
        unavailable(f"no MySQL/MariaDB at {MYSQL_URL}")
    return MYSQL_URL


@pytest.fixture
def table_name() -> str:
    """A table name no other test uses, so tests run in any order."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_raw(postgres_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection for checking what the manager did."""
    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def pg_table(pg_raw: asyncpg.Connection, table_name: str) -> AsyncIterator[str]:
    await pg_raw.execute(f"CREATE TABLE {table_name} (id serial PRIMARY KEY, name text, n int)")
    try:
        yield table_name
    finally:
        await pg_raw.execute(f"DROP TABLE IF EXISTS {table_name}")


@pytest.fixture
async def pg_manager(postgres_url: str) -> AsyncIterator[AsyncPostgreSQLManager]:
    manager = AsyncPostgreSQLManager(
        postgres_url,
        options=DatabaseOptions(max_connections=10, statement_timeout=5, acquire_timeout=5),
    )
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()


@pytest.fixture
async def sqlite_manager(tmp_path: Path) -> AsyncIterator[AsyncSQLiteManager]:
    manager = AsyncSQLiteManager(str(tmp_path / "test.db"), max_connections=5)
    await manager.initialize_pool()
    try:
        yield manager
    finally:
        await manager.close()


async def poll(predicate: object, *, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Await until ``predicate()`` (sync or async) is truthy, or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval)
