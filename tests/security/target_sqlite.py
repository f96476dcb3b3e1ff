"""SQLite as a :class:`~tests.security.harness.Target`.

The database file and the attack directory live under pytest's tmp_path. A
pooled SQLite connection cannot be killed from outside, so repair() restarts
the gateway process.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from tests.security.harness import SEED, Target
from tests.security.support import READER, WRITER, RawSQLite


class SQLiteTarget(Target):
    dialect = "sqlite"

    def __init__(self, workdir: Path, *, prefix: str) -> None:
        files = workdir / "attack-files"
        files.mkdir()
        super().__init__(prefix=prefix, db="lite", ro_db="lite_ro", files=files)
        self.path = workdir / "lite.db"
        self.raw = RawSQLite(self.path)
        self.attached = f"{prefix}_x"

    def setup(self) -> None:
        self.raw.execute("PRAGMA journal_mode = WAL")
        self.raw.execute(f"CREATE TABLE {self.table} (id INTEGER PRIMARY KEY, name TEXT, n INT)")
        self.raw.execute(
            f"CREATE TABLE {self.acks} (id INTEGER PRIMARY KEY AUTOINCREMENT, marker TEXT)"
        )
        self.seed()

    def seed(self) -> None:
        self.raw.execute(f"DELETE FROM {self.table}")
        for row in SEED:
            self.raw.execute(f"INSERT INTO {self.table} VALUES (?, ?, ?)", row)

    def config(self) -> str:
        t = self.table
        return f"""
[databases.lite]
type = "sqlite"
path = "lite.db"
max_connections = 1

[databases.lite_ro]
type = "sqlite"
path = "lite.db"
max_connections = 1
read_only = true

[operations.lite_find]
database = "lite"
query = "SELECT id, name FROM {t} WHERE name = ? ORDER BY id"
params = ["name"]

[operations.lite_by_id]
database = "lite"
query = "SELECT id FROM {t} WHERE CAST(id AS TEXT) = ?"
params = ["id"]

[operations.lite_note]
database = "lite"
query = "INSERT INTO {self.acks} (marker) VALUES (?)"
params = ["marker"]
"""

    def teardown(self) -> None:
        self.raw.close()

    def values(self) -> dict[str, Any]:
        return {"attached": self.attached, "db_path": self.path}

    def data_expression(self) -> str:
        return (
            "(SELECT count(*) || ':' || coalesce(group_concat(id || ',' || coalesce(name, '')"
            f" || ',' || coalesce(n, ''), '|'), '') FROM (SELECT * FROM {self.table} ORDER BY id))"
        )

    def data_sql(self) -> str:
        return f"SELECT {self.data_expression()} AS data"

    def snapshot(self) -> dict[str, Any]:
        snapshot = {
            "data": self.raw.fetchval(self.data_sql()),
            "schema": self.raw.fetch(
                "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
            ),
            "user_version": self.raw.fetchval("PRAGMA user_version"),
            "application_id": self.raw.fetchval("PRAGMA application_id"),
            "journal_mode": self.raw.fetchval("PRAGMA journal_mode"),
            "files": sorted(os.listdir(self.files)),
            "workdir": sorted(
                n for n in os.listdir(self.path.parent) if not n.startswith(("lite.db", "gateway"))
            ),
        }
        return snapshot

    def probe_sql(self) -> str:
        # SQLite keeps no server-side id: the "pool" is the writer connection.
        return f"""
SELECT
  'writer' AS pool_id,
  (SELECT count(*) FROM sqlite_temp_master) AS temp_objects,
  {self.data_expression()} AS data
"""

    def ack_sql(self) -> str:
        return f"INSERT INTO {self.acks} (marker) VALUES (?)"

    def echo_sql(self) -> str:
        return "SELECT CAST(? AS TEXT) AS name"

    def raw_execute(self, sql: str) -> None:
        self.raw.execute(sql)

    def ack_count(self, marker: str) -> int:
        return int(
            self.raw.fetchval(f"SELECT count(*) FROM {self.acks} WHERE marker = ?", (marker,))
        )

    def session_state(self, pool_id: Any) -> str:
        # A leaked open write transaction holds the write lock: a raw
        # BEGIN IMMEDIATE would wait for it (busy), so try without waiting.
        self.raw.conn.execute("PRAGMA busy_timeout = 0")
        try:
            self.raw.conn.execute("BEGIN IMMEDIATE")
            self.raw.conn.execute("ROLLBACK")
            return "idle"
        except sqlite3.Error as exc:
            return f"holding the write lock ({exc})"
        finally:
            self.raw.conn.execute("PRAGMA busy_timeout = 5000")

    def extra_session_checks(self, db: str) -> None:
        # Neither pooled connection may see an attached database, and the
        # reader's connection must not hold a temp table either.
        # (The writer's probe already counted its temp objects.)
        rows = self.gw.rows(db, "SELECT count(*) AS n FROM sqlite_temp_master", key=READER)
        assert rows == [{"n": 0}], "a temp object outlived its request"
        for key in (READER, WRITER):
            response = self.gw.sql(
                db, f"SELECT count(*) AS n FROM {self.attached}.sqlite_master", key=key
            )
            assert response.status_code != 200, f"{self.attached} is attached: {response.text}"

    def repair(self, before: dict[str, Any] | None) -> None:
        # The pooled connections cannot be killed from outside: a fresh
        # gateway process gets fresh ones. Then restore the file's contents.
        assert self.server is not None
        self.server.stop()
        t = self.table
        self.raw.execute("PRAGMA busy_timeout = 5000")
        names = {
            row[0] for row in self.raw.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if t not in names:
            renamed = next(
                (n for n in names if n.startswith(self.prefix) and n not in (t, self.acks)), None
            )
            if renamed is not None:
                self.raw.execute(f"ALTER TABLE {renamed} RENAME TO {t}")
            else:
                self.raw.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, name TEXT, n INT)")
        for kind, name in self.raw.fetch(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger', "
            "'index') AND name NOT LIKE 'sqlite_%'"
        ):
            if name not in (t, self.acks):
                self.raw.execute(f"DROP {kind.upper()} IF EXISTS {name}")
        columns = [row[1] for row in self.raw.fetch(f"PRAGMA table_info({t})")]
        for column in columns:
            if column not in ("id", "name", "n"):
                self.raw.execute(f"ALTER TABLE {t} DROP COLUMN {column}")
        self.raw.execute("PRAGMA user_version = 0")
        self.raw.execute("PRAGMA application_id = 0")
        self.raw.execute("PRAGMA journal_mode = WAL")
        self.seed()
        for name in os.listdir(self.files):
            (self.files / name).unlink(missing_ok=True)
        self.server.restart()
