"""MariaDB as a :class:`~tests.security.harness.Target`.

Every object a test or an attack creates is named with the prefix, listed by
the snapshot and dropped by repair() and teardown(). Attacks reaching outside
the test objects are limited to harmless forms: a victim connection and a
user-lock name of our own, a global set to its own value.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from tests.security.harness import SEED, Target
from tests.security.support import ADMIN, RawMariaDB, toml_string


class MariaDBTarget(Target):
    dialect = "mysql"

    def __init__(self, url: str, *, prefix: str, files: Path) -> None:
        super().__init__(prefix=prefix, db="maria", ro_db="maria_ro", files=files)
        self.url = url
        self.raw = RawMariaDB(url)
        self.victim = RawMariaDB(url)
        self.victim_id = self.victim.thread_id()
        self.lock_name = f"{prefix}_lock"
        self.infile = files / "input.csv"

    def setup(self) -> None:
        t, p = self.table, self.prefix
        self.raw.execute(
            f"CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(200), n INT) ENGINE=InnoDB"
        )
        self.raw.execute(
            f"CREATE TABLE {self.acks} (id INT AUTO_INCREMENT PRIMARY KEY, marker TEXT)"
            " ENGINE=InnoDB"
        )
        self.seed()
        self.raw.execute(f"CREATE PROCEDURE {p}_proc() MODIFIES SQL DATA DELETE FROM {t}")
        self.raw.execute(
            f"CREATE PROCEDURE {p}_tx() MODIFIES SQL DATA BEGIN DELETE FROM {t}; COMMIT; END"
        )
        self.infile.write_text("999\tevil\t9\n", encoding="utf-8")
        self.infile.chmod(0o644)

    def seed(self) -> None:
        self.raw.execute(f"DELETE FROM {self.table}")
        for row in SEED:
            self.raw.execute(f"INSERT INTO {self.table} VALUES (%s, %s, %s)", row)

    def config(self) -> str:
        url = toml_string(self.url)
        t = self.table
        return f"""
[databases.maria]
type = "mysql"
url = {url}
min_connections = 1
max_connections = 1
statement_timeout = 5
acquire_timeout = 10

[databases.maria_ro]
type = "mysql"
url = {url}
min_connections = 1
max_connections = 1
statement_timeout = 5
acquire_timeout = 10
read_only = true

[operations.maria_find]
database = "maria"
query = "SELECT id, name FROM {t} WHERE name = ? ORDER BY id"
params = ["name"]

[operations.maria_by_id]
database = "maria"
query = "SELECT id FROM {t} WHERE CAST(id AS CHAR) = ?"
params = ["id"]

[operations.maria_note]
database = "maria"
query = "INSERT INTO {self.acks} (marker) VALUES (?)"
params = ["marker"]
"""

    def teardown(self) -> None:
        p = self.prefix
        with contextlib.suppress(Exception):
            self.kill_pools()
        for sql in (
            f"DROP TABLE IF EXISTS {self.table}, {self.acks}",
            f"DROP PROCEDURE IF EXISTS {p}_proc",
            f"DROP PROCEDURE IF EXISTS {p}_tx",
        ):
            with contextlib.suppress(Exception):
                self.raw.execute(sql)
        with contextlib.suppress(Exception):
            self.drop_strays()
        self.raw.close()
        self.victim.close()
        shutil.rmtree(self.files, ignore_errors=True)

    def values(self) -> dict[str, Any]:
        return {
            "lockname": self.lock_name,
            "infile": self.infile,
            "victim_id": self.victim_id,
        }

    def revive_victim(self) -> None:
        try:
            self.victim_id = self.victim.thread_id()
        except Exception:
            with contextlib.suppress(Exception):
                self.victim.close()
            self.victim = RawMariaDB(self.url)
            self.victim_id = self.victim.thread_id()

    def data_expression(self) -> str:
        return (
            "(SELECT CONCAT(COUNT(*), ':', COALESCE(MD5(GROUP_CONCAT("
            "CONCAT_WS(',', id, name, n) ORDER BY id SEPARATOR '|')), ''))"
            f" FROM {self.table})"
        )

    def data_sql(self) -> str:
        return f"SELECT {self.data_expression()} AS data"

    def snapshot(self) -> dict[str, Any]:
        p = self.prefix
        like = p + "%"
        row = self.raw.fetch(
            f"""
SELECT
  {self.data_expression()} AS data,
  (SELECT COALESCE(GROUP_CONCAT(CONCAT(table_name, '/', table_type) ORDER BY table_name), '')
     FROM information_schema.tables
     WHERE table_schema = DATABASE() AND table_name LIKE %s) AS tables,
  (SELECT COALESCE(GROUP_CONCAT(column_name ORDER BY ordinal_position), '')
     FROM information_schema.columns
     WHERE table_schema = DATABASE() AND table_name = %s) AS columns,
  (SELECT COALESCE(GROUP_CONCAT(routine_name ORDER BY routine_name), '')
     FROM information_schema.routines
     WHERE routine_schema = DATABASE() AND routine_name LIKE %s) AS routines,
  (SELECT COALESCE(GROUP_CONCAT(trigger_name), '') FROM information_schema.triggers
     WHERE event_object_schema = DATABASE() AND event_object_table = %s) AS triggers,
  (SELECT COALESCE(GROUP_CONCAT(event_name), '') FROM information_schema.events
     WHERE event_name LIKE %s) AS events,
  (SELECT COALESCE(GROUP_CONCAT(schema_name), '') FROM information_schema.schemata
     WHERE schema_name LIKE %s) AS schema_names,
  (SELECT COALESCE(GROUP_CONCAT(index_name ORDER BY index_name), '')
     FROM information_schema.statistics
     WHERE table_schema = DATABASE() AND table_name = %s) AS indexes,
  (SELECT COUNT(*) FROM information_schema.table_privileges
     WHERE table_name LIKE %s) AS grants,
  IS_FREE_LOCK(%s) AS lock_free,
  (SELECT COUNT(*) FROM information_schema.processlist WHERE id = %s) AS victim_alive,
  @@global.max_statement_time AS global_max_statement_time,
  @@global.sql_select_limit AS global_sql_select_limit,
  @@global.read_only AS global_read_only
""",
            (like, self.table, like, self.table, like, like, self.table, like, self.lock_name,
             self.victim_id),
        )[0]  # fmt: skip
        keys = [
            "data",
            "tables",
            "columns",
            "routines",
            "triggers",
            "events",
            "schemas",
            "indexes",
            "grants",
            "lock_free",
            "victim_alive",
            "global_max_statement_time",
            "global_sql_select_limit",
            "global_read_only",
        ]
        snapshot = dict(zip(keys, row, strict=True))
        snapshot["files"] = sorted(n for n in os.listdir(self.files) if n != self.infile.name)
        return snapshot

    def probe_sql(self) -> str:
        return f"""
SELECT
  CONNECTION_ID() AS pool_id,
  @@session.sql_select_limit AS sql_select_limit,
  @@session.max_statement_time AS max_statement_time,
  @@session.autocommit AS autocommit,
  @@session.tx_read_only AS tx_read_only,
  @@session.tx_isolation AS tx_isolation,
  @@session.sql_mode AS sql_mode,
  @@session.time_zone AS time_zone,
  @@session.character_set_client AS character_set_client,
  @@session.character_set_results AS character_set_results,
  @@session.collation_connection AS collation_connection,
  @@session.foreign_key_checks AS foreign_key_checks,
  @@session.unique_checks AS unique_checks,
  @@session.sql_safe_updates AS sql_safe_updates,
  @@session.lock_wait_timeout AS lock_wait_timeout,
  @@session.innodb_lock_wait_timeout AS innodb_lock_wait_timeout,
  @@session.group_concat_max_len AS group_concat_max_len,
  @@session.max_join_size AS max_join_size,
  @@session.sql_log_bin AS sql_log_bin,
  @@session.old_mode AS old_mode,
  {self.data_expression()} AS data
"""

    def ack_sql(self) -> str:
        return f"INSERT INTO {self.acks} (marker) VALUES (?)"

    def echo_sql(self) -> str:
        return "SELECT CAST(? AS CHAR) AS name"

    def raw_execute(self, sql: str) -> None:
        self.raw.execute(sql)

    def extra_session_checks(self, db: str) -> None:
        # Guarded SQL may not read user variables; the admin (unguarded, same
        # pooled connection) can: none may outlive the request that set it.
        rows = self.gw.rows(db, "SELECT @evil AS evil, @s AS s", key=ADMIN)
        assert rows == [{"evil": None, "s": None}], "a user variable outlived its request"

    def changed_probe(self) -> dict[str, Any] | None:
        query = "SET STATEMENT sql_select_limit = 7 FOR " + self.probe_sql()
        row: dict[str, Any] = self.gw.rows(self.db, query, key=ADMIN)[0]
        assert str(row["sql_select_limit"]) == "7"
        return row

    def ack_count(self, marker: str) -> int:
        return int(
            self.raw.fetchval(f"SELECT COUNT(*) FROM {self.acks} WHERE marker = %s", (marker,))
        )

    def session_state(self, pool_id: Any) -> str:
        transactions = self.raw.fetch(
            "SELECT trx_state, trx_started, trx_query FROM information_schema.innodb_trx"
            " WHERE trx_mysql_thread_id = %s",
            (pool_id,),
        )
        busy = self.raw.fetch(
            "SELECT command, state, info FROM information_schema.processlist"
            " WHERE id = %s AND command <> 'Sleep'",
            (pool_id,),
        )
        if not transactions and not busy:
            return "idle"
        return f"transaction {transactions}, thread {busy}"

    def kill_pools(self) -> None:
        """KILL the gateway's own threads (found by their client ports)."""
        assert self.server is not None
        ports = self.server.client_ports(self.raw.target.port)
        for thread, host in self.raw.fetch("SELECT id, host FROM information_schema.processlist"):
            _, _, port = str(host).rpartition(":")
            if port.isdigit() and int(port) in ports:
                with contextlib.suppress(Exception):
                    self.raw.execute(f"KILL {int(thread)}")

    def drop_strays(self) -> None:
        p = self.prefix
        keep = {self.table, self.acks}
        for name, kind in self.raw.fetch(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name LIKE %s",
            (p + "%",),
        ):
            if name not in keep:
                what = "VIEW" if kind == "VIEW" else "TABLE"
                self.raw.execute(f"DROP {what} IF EXISTS `{name}`")
        for name, kind in self.raw.fetch(
            "SELECT routine_name, routine_type FROM information_schema.routines "
            "WHERE routine_schema = DATABASE() AND routine_name LIKE %s",
            (p + "%",),
        ):
            if name not in (f"{p}_proc", f"{p}_tx"):
                self.raw.execute(f"DROP {kind} IF EXISTS `{name}`")
        for (name,) in self.raw.fetch(
            "SELECT trigger_name FROM information_schema.triggers WHERE trigger_name LIKE %s",
            (p + "%",),
        ):
            self.raw.execute(f"DROP TRIGGER IF EXISTS `{name}`")
        for (name,) in self.raw.fetch(
            "SELECT event_name FROM information_schema.events WHERE event_name LIKE %s",
            (p + "%",),
        ):
            self.raw.execute(f"DROP EVENT IF EXISTS `{name}`")
        for (name,) in self.raw.fetch(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s",
            (p + "%",),
        ):
            self.raw.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def repair(self, before: dict[str, Any] | None) -> None:
        self.kill_pools()
        t = self.table
        with contextlib.suppress(Exception):
            self.raw.execute("XA ROLLBACK %s", (self.prefix,))
        present = self.raw.fetchval(
            "SELECT COUNT(*) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (t,),
        )
        if not present:
            renamed = self.raw.fetchval(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
                " AND table_name LIKE %s AND table_name NOT IN (%s, %s) AND table_type = "
                "'BASE TABLE' LIMIT 1",
                (self.prefix + "%", t, self.acks),
            )
            if renamed is not None:
                self.raw.execute(f"RENAME TABLE `{renamed}` TO {t}")
            else:
                self.raw.execute(
                    f"CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(200), n INT) ENGINE=InnoDB"
                )
        self.drop_strays()
        for (column,) in self.raw.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE()"
            " AND table_name = %s AND column_name NOT IN ('id', 'name', 'n')",
            (t,),
        ):
            self.raw.execute(f"ALTER TABLE {t} DROP COLUMN `{column}`")
        for (index,) in self.raw.fetch(
            "SELECT DISTINCT index_name FROM information_schema.statistics WHERE table_schema = "
            "DATABASE() AND table_name = %s AND index_name <> 'PRIMARY'",
            (t,),
        ):
            self.raw.execute(f"DROP INDEX `{index}` ON {t}")
        with contextlib.suppress(Exception):
            self.raw.execute(f"REVOKE ALL PRIVILEGES ON {t} FROM PUBLIC")
        self.seed()
        for name in os.listdir(self.files):
            if name != self.infile.name:
                (self.files / name).unlink(missing_ok=True)
        self.revive_victim()
