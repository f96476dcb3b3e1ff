"""Each security rule, shown against ``iogate serve`` running as a real process.

One gateway process (module scope) with a config file: API keys with scopes,
a PostgreSQL database with a short statement timeout, a read-only database,
a database that accepts only named operations, SQLite, and small limits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import free_port

ADMIN = "admin-key-" + uuid.uuid4().hex
READER = "reader-key-" + uuid.uuid4().hex
OPS_ONLY = "ops-key-" + uuid.uuid4().hex
MAX_BODY = 4096


class Gateway:
    def __init__(self, base: str, postgres_url: str, log: Path) -> None:
        self.base = base
        self.postgres_url = postgres_url
        self.log = log

    def post(
        self, path: str, body: Any = None, *, key: str | None = ADMIN, timeout: float = 10
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{self.base}{path}", json=body, headers=headers, timeout=timeout)

    def sql(self, db: str, query: str, params: Any = None, *, key: str | None = ADMIN) -> Any:
        body = {"db_name": db, "query": query, "params": params}
        return self.post("/database/execute", body, key=key)

    def pg_fetchval(self, query: str) -> Any:
        async def run() -> Any:
            conn = await asyncpg.connect(self.postgres_url)
            try:
                return await conn.fetchval(query)
            finally:
                await conn.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def gateway(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("secure-gateway")
    port = free_port()
    config = workdir / "iogate.toml"
    config.write_text(
        f"""
[gateway]
host = "127.0.0.1"
port = {port}
max_body_bytes = {MAX_BODY}
max_batch_operations = 5
max_rows = 100
request_timeout = 10

[[gateway.api_keys]]
name = "admin"
key = "${{ADMIN_KEY}}"
scopes = ["db:*:write", "batch", "ops:*"]

[[gateway.api_keys]]
name = "reader"
key = "${{READER_KEY}}"
scopes = ["db:pg:read", "db:lite:read", "batch"]

[[gateway.api_keys]]
name = "ops-only"
key = "${{OPS_KEY}}"
scopes = ["ops:count_rows"]

[databases.pg]
type = "postgresql"
url = "{postgres_url}"
max_connections = 4
statement_timeout = 0.5

[databases.locked]
type = "postgresql"
url = "{postgres_url}"
max_connections = 2
read_only = true

[databases.named_only]
type = "postgresql"
url = "{postgres_url}"
max_connections = 2
allow_raw_sql = false

[databases.lite]
type = "sqlite"
path = "lite.db"

[operations.count_rows]
database = "named_only"
query = "SELECT count(*)::int AS n FROM generate_series(1, $1::int)"
params = ["n"]
""",
        encoding="utf-8",
    )
    log = workdir / "gateway.log"
    env = {**os.environ, "ADMIN_KEY": ADMIN, "READER_KEY": READER, "OPS_KEY": OPS_ONLY}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "iogate.cli", "serve", "--config", str(config)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gateway did not come up"
            time.sleep(0.1)  # polling a subprocess: nothing to await
        yield Gateway(base, postgres_url, log)
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_missing_unknown_and_under_scoped_keys(gateway: Gateway) -> None:
    assert gateway.sql("pg", "SELECT 1", key=None).status_code == 401
    assert gateway.sql("pg", "SELECT 1", key="not-a-key").status_code == 401
    unscoped = gateway.sql("pg", "SELECT 1", key=OPS_ONLY)
    assert unscoped.status_code == 403
    assert "db:pg:read" in unscoped.text
    assert gateway.sql("pg", "SELECT 1 AS one", key=READER).json()["data"] == [{"one": 1}]


def test_read_only_key_cannot_create_a_table_with_stacked_statements(gateway: Gateway) -> None:
    table = f"sneaky_{uuid.uuid4().hex[:8]}"
    for query in (
        f"SELECT 1; CREATE TABLE {table} (id int)",
        f"CREATE TABLE {table} (id int)",
        f"SELECT 1; CREATE TABLE {table} (id int); COMMIT; CREATE TABLE {table}_2 (id int)",
    ):
        response = gateway.sql("pg", query, key=READER)
        assert response.status_code in (400, 403, 422), response.text
        assert response.json()["success"] is False
    exists = gateway.pg_fetchval(
        f"SELECT count(*) FROM pg_class WHERE relname IN ('{table}', '{table}_2')"
    )
    assert exists == 0


def test_read_only_key_cannot_write_sqlite(gateway: Gateway) -> None:
    table = f"t_{uuid.uuid4().hex[:8]}"
    refused = gateway.sql("lite", f"SELECT 1; CREATE TABLE {table} (id int)", key=READER)
    assert refused.json()["success"] is False
    listed = gateway.sql(
        "lite", "SELECT count(*) AS n FROM sqlite_master WHERE name = ?", [table], key=ADMIN
    )
    assert listed.json()["data"] == [{"n": 0}]


def test_read_only_database_refuses_writes_even_for_a_write_key(gateway: Gateway) -> None:
    table = f"locked_{uuid.uuid4().hex[:8]}"
    response = gateway.sql("locked", f"CREATE TABLE {table} (id int)", key=ADMIN)
    assert response.status_code == 403
    # DDL is refused by the parser before it reaches the database.
    assert response.json()["error_type"] == "forbidden_statement"
    write = gateway.sql("locked", "SELECT nextval('no_such_sequence')", key=ADMIN)
    assert write.status_code == 400  # it did reach the database (read-only transaction)
    assert gateway.pg_fetchval(f"SELECT count(*) FROM pg_class WHERE relname = '{table}'") == 0


def test_statement_timeout_returns_promptly(gateway: Gateway) -> None:
    started = time.monotonic()
    response = gateway.sql("pg", "SELECT pg_sleep(5)", key=ADMIN)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error_type"] == "timeout"
    assert elapsed < 3, elapsed
    # The pool is still usable afterwards.
    assert gateway.sql("pg", "SELECT 2 AS two").json()["data"] == [{"two": 2}]


def test_max_rows_truncates(gateway: Gateway) -> None:
    response = gateway.sql("pg", "SELECT g AS n FROM generate_series(1, 5000) AS g", key=READER)
    body = response.json()
    assert response.status_code == 200
    assert len(body["data"]) == 100
    assert body["truncated"] is True
    assert body["data"][-1] == {"n": 100}


def test_raw_sql_refused_where_only_named_operations_are_allowed(gateway: Gateway) -> None:
    direct = gateway.sql("named_only", "SELECT 1", key=ADMIN)
    assert direct.status_code == 403
    assert "allow_raw_sql" in direct.text
    batch = gateway.post(
        "/batch/execute",
        {"operations": [{"type": "database", "db_name": "named_only", "query": "SELECT 1"}]},
    )
    assert batch.status_code == 403
    named = gateway.post("/operations/count_rows", {"n": 7}, key=OPS_ONLY)
    assert named.status_code == 200, named.text
    assert named.json()["data"] == [{"n": 7}]


def test_batch_needs_batch_scope_and_every_operation_scope(gateway: Gateway) -> None:
    ops = [{"type": "database", "db_name": "pg", "query": "SELECT 1"}]
    assert gateway.post("/batch/execute", {"operations": ops}, key=OPS_ONLY).status_code == 403
    writes = [{"type": "database", "db_name": "lite", "query": "SELECT 1"}]
    # SQL inside a batch needs write on its database: the reader is refused.
    assert gateway.post("/batch/execute", {"operations": writes}, key=READER).status_code == 403
    assert gateway.post("/batch/execute", {"operations": ops}, key=ADMIN).status_code == 200


def test_batch_size_limit(gateway: Gateway) -> None:
    ops = [{"type": "database", "db_name": "pg", "query": "SELECT 1"}] * 6
    response = gateway.post("/batch/execute", {"operations": ops})
    assert response.status_code in (413, 422)
    assert "max_batch_operations" in response.text


def test_body_limit_with_and_without_content_length(gateway: Gateway) -> None:
    big = {"db_name": "pg", "query": "SELECT $1::text", "params": ["x" * (MAX_BODY * 2)]}
    assert gateway.post("/database/execute", big).status_code == 413

    # A chunked body never announces its size: the gateway must count it.
    host, port = gateway.base.removeprefix("http://").split(":")
    payload = b'{"db_name": "pg", "query": "SELECT 1", "params": ["' + b"y" * MAX_BODY * 3 + b'"]}'
    request = (
        f"POST /database/execute HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(payload[i : i + 1000]):x}\r\n".encode() + payload[i : i + 1000] + b"\r\n"
        for i in range(0, len(payload), 1000)
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request + chunks + b"0\r\n\r\n")
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]


def test_start_up_warns_about_untrusted_sql_over_a_superuser(gateway: Gateway) -> None:
    """The suite's PostgreSQL account is a superuser and a reader key reaches
    ``pg``: the gateway names the database in a warning (in the background,
    so poll the log)."""
    deadline = time.monotonic() + 10
    while "without db:pg:admin" not in gateway.log.read_text():
        assert time.monotonic() < deadline, gateway.log.read_text()
        time.sleep(0.05)  # polling a subprocess's log: nothing to await
    log = gateway.log.read_text()
    assert "database 'named_only'" not in log  # allow_raw_sql = false
