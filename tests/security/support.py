"""Shared machinery for the guarded-SQL corpus (docs/security.md, DESIGN §6).

Each test module starts ONE real ``iogate serve`` process with a config file
(:func:`serve`) and three keys: ``READER`` (``db:NAME:read``), ``WRITER``
(``db:*:write``, ``batch``, ``ops:*``) and ``ADMIN`` (``db:*:admin``). Every
SQL database is configured with ``max_connections = 1``, so the hostile
requests and the checks that follow share one pooled connection: whatever
an attack leaves behind on the session, the next request sees.

What the database really holds is read beside the gateway, on raw driver
connections (:class:`RawPostgres`, :class:`RawMariaDB`, :class:`RawSQLite`),
never through iogate. The async drivers run on a private event loop
(``asyncio.Runner``) so that the tests themselves stay synchronous, like the
HTTP client they drive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import httpx

from tests.conftest import free_port

T = TypeVar("T")

RUN = uuid.uuid4().hex[:10]
READER = "reader-" + uuid.uuid4().hex
WRITER = "writer-" + uuid.uuid4().hex
ADMIN = "admin-" + uuid.uuid4().hex
KEYS = {"READER_KEY": READER, "WRITER_KEY": WRITER, "ADMIN_KEY": ADMIN}

# What a refused statement answers.
FORBIDDEN = "forbidden_statement"
# A read key's data write may be refused by the guard or by the database's
# READ ONLY transaction; both are 403 and neither writes.
REFUSED_WRITE = frozenset({FORBIDDEN, "read_only"})
STARTUP_SECONDS = 60


def keys_toml(reader_scopes: list[str]) -> str:
    """The three ``[[gateway.api_keys]]`` tables; secrets come from the environment."""
    return f"""
[[gateway.api_keys]]
name = "reader"
key = "${{READER_KEY}}"
scopes = {reader_scopes!r}

[[gateway.api_keys]]
name = "writer"
key = "${{WRITER_KEY}}"
scopes = ["db:*:write", "batch", "ops:*"]

[[gateway.api_keys]]
name = "admin"
key = "${{ADMIN_KEY}}"
scopes = ["db:*:admin", "db:*:write", "batch", "ops:*"]
""".replace("'", '"')


class Gateway:
    """An ``iogate serve`` process, spoken to over HTTP with one client."""

    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log
        self.client = httpx.Client(base_url=base, timeout=30)

    def close(self) -> None:
        self.client.close()

    def post(self, path: str, body: Any, *, key: str, timeout: float = 30) -> httpx.Response:
        return self.client.post(
            path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
        )

    def sql(
        self, db: str, query: str, params: Any = None, *, key: str, timeout: float = 30
    ) -> httpx.Response:
        body = {"db_name": db, "query": query, "params": params}
        return self.post("/database/execute", body, key=key, timeout=timeout)

    def batch(self, operations: list[Any], *, key: str, atomic: bool = False) -> httpx.Response:
        return self.post("/batch/execute", {"operations": operations, "atomic": atomic}, key=key)

    def operation(self, name: str, params: Any, *, key: str) -> httpx.Response:
        return self.post(f"/operations/{name}", params, key=key)

    def rows(self, db: str, query: str, params: Any = None, *, key: str) -> list[dict[str, Any]]:
        """Rows of a statement that must succeed."""
        response = self.sql(db, query, params, key=key)
        assert response.status_code == 200, f"{query!r} -> {response.status_code} {response.text}"
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows


class GatewayProcess:
    """``iogate serve --config`` in ``workdir``; :meth:`restart` gives a fresh
    process (and fresh pools) on the same port after a failed check."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "iogate.toml"
        self.config.write_text(
            f'[gateway]\nhost = "127.0.0.1"\nport = {self.port}\nrequest_timeout = 30\n' + config,
            encoding="utf-8",
        )
        self.log = workdir / "gateway.log"
        self.gateway = Gateway(f"http://127.0.0.1:{self.port}", self.log)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "iogate.cli", "serve", "--config", str(self.config)],
                cwd=self.workdir,
                env={**os.environ, **KEYS},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, self.log.read_text()
            try:
                if self.gateway.client.get("/health", timeout=1).status_code == 200:
                    return self.gateway
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up:\n" + self.log.read_text()
            time.sleep(0.05)  # polling a subprocess: nothing to await

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        # A new client: the old one's keep-alive connections went with the process.
        self.gateway.close()
        self.gateway.client = httpx.Client(base_url=self.gateway.base, timeout=30)
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.gateway.close()

    def client_ports(self, server_port: int) -> set[int]:
        """Local ports of the process's TCP connections to ``server_port``: how
        its pooled connections are told apart from anyone else's on a shared
        server (pg_stat_activity.client_port, the processlist's host)."""
        if self.process is None:
            return set()
        pid = self.process.pid
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[len("socket:[") : -1])
        ports = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, remote, inode = fields[1], fields[2], fields[9]
                    if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == server_port:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        return ports


@contextmanager
def serve(workdir: Path, config: str) -> Iterator[GatewayProcess]:
    """Run ``iogate serve --config`` in ``workdir`` until the block ends."""
    server = GatewayProcess(workdir, config)
    try:
        server.start()
        yield server
    finally:
        server.close()


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str) -> T:
    """Call ``predicate`` until it returns something truthy, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling another process: nothing to await


# -- raw connections -------------------------------------------------------------


class RawPostgres:
    """A plain asyncpg connection, with timeouts so a leaked lock fails a test
    instead of hanging it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._runner = asyncio.Runner()
        self._conn: asyncpg.Connection = self._runner.run(self._connect())

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            self.url,
            timeout=10,
            server_settings={"statement_timeout": "10s", "lock_timeout": "5s"},
        )

    def fetchval(self, query: str, *args: Any) -> Any:
        return self._runner.run(self._conn.fetchval(query, *args))

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return self._runner.run(self._conn.fetch(query, *args))

    def execute(self, query: str, *args: Any) -> str:
        return self._runner.run(self._conn.execute(query, *args))

    def pid(self) -> int:
        return int(self.fetchval("SELECT pg_backend_pid()"))

    def close(self) -> None:
        try:
            self._runner.run(self._conn.close(timeout=5))
        finally:
            self._runner.close()


@dataclass(frozen=True)
class MariaDBTarget:
    host: str
    port: int
    user: str
    password: str
    database: str


def mariadb_target(url: str) -> MariaDBTarget:
    parts = urlsplit(url)
    return MariaDBTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=unquote(parts.username or "root"),
        password=unquote(parts.password or ""),
        database=parts.path.lstrip("/") or "test",
    )


class RawMariaDB:
    """A plain asyncmy connection in autocommit mode."""

    def __init__(self, url: str) -> None:
        self.target = mariadb_target(url)
        self._runner = asyncio.Runner()
        self._conn = self._runner.run(self._connect())

    async def _connect(self) -> Any:
        import asyncmy

        target = self.target
        conn = await asyncmy.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database,
            autocommit=True,
            connect_timeout=10,
        )
        cursor = conn.cursor()
        await cursor.execute("SET SESSION max_statement_time = 10, lock_wait_timeout = 5")
        await cursor.execute("SET SESSION innodb_lock_wait_timeout = 5")
        await cursor.close()
        return conn

    async def _fetch(self, query: str, args: Any) -> list[tuple[Any, ...]]:
        cursor = self._conn.cursor()
        try:
            await cursor.execute(query, args)
            return list(await cursor.fetchall()) if cursor.description else []
        finally:
            await cursor.close()

    def fetch(self, query: str, args: Any = None) -> list[tuple[Any, ...]]:
        return self._runner.run(self._fetch(query, args))

    def fetchval(self, query: str, args: Any = None) -> Any:
        rows = self.fetch(query, args)
        return rows[0][0] if rows else None

    def execute(self, query: str, args: Any = None) -> None:
        self.fetch(query, args)

    def thread_id(self) -> int:
        return int(self.fetchval("SELECT CONNECTION_ID()"))

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            self._runner.close()


class RawSQLite:
    """The SQLite file opened directly, beside the gateway's own connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, timeout=5, isolation_level=None)

    def fetch(self, query: str, args: Any = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(query, args).fetchall())

    def fetchval(self, query: str, args: Any = ()) -> Any:
        rows = self.fetch(query, args)
        return rows[0][0] if rows else None

    def execute(self, query: str, args: Any = ()) -> None:
        self.conn.execute(query, args)

    def close(self) -> None:
        self.conn.close()


# -- names, paths, config ----------------------------------------------------------


def new_prefix() -> str:
    """A unique name prefix for the objects of one target."""
    return f"sec{uuid.uuid4().hex[:8]}"


def server_writable_dir() -> Path:
    """A directory under /tmp that the database servers (other users) can write
    into, so a file-writing attack that gets through leaves a file we see."""
    path = Path(tempfile.mkdtemp(prefix="iogate-sec-"))
    path.chmod(0o1777)
    return path


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- expectations ----------------------------------------------------------------


def assert_refused(
    response: httpx.Response, *, allow: frozenset[str] = frozenset({FORBIDDEN})
) -> None:
    """403 with a failed Result whose error_type is one of ``allow``."""
    assert response.status_code == 403, f"{response.status_code} {response.text}"
    body = response.json()
    assert body.get("success") is False, body
    assert body.get("error_type") in allow, body
    assert body.get("error"), body


def assert_forbidden_result(result: dict[str, Any]) -> None:
    """One batch operation's Result: refused as a forbidden statement."""
    assert result["success"] is False, result
    assert result["error_type"] == FORBIDDEN, result
    assert result["error"], result


def assert_scope_refused(response: httpx.Response) -> None:
    """A request refused as a whole for a missing scope (problem+json or Result)."""
    assert response.status_code == 403, f"{response.status_code} {response.text}"
