"""PostgreSQL as a :class:`~tests.security.harness.Target`.

The gateway logs in as a role of its own (``<prefix>_gw``, a superuser like
the usual test account), so the large objects it creates are told apart from
those of other clients of a shared server. Every object a test or an attack
creates is named with the prefix, listed by the snapshot and dropped by
repair() and teardown(). Attacks reaching outside the test objects are
limited to harmless forms: a victim connection and an advisory-lock key of
our own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from tests.security.harness import SEED, Target
from tests.security.support import ADMIN, RawPostgres, toml_string, wait_for


class PostgresTarget(Target):
    dialect = "postgresql"

    def __init__(self, url: str, *, prefix: str, files: Path) -> None:
        super().__init__(prefix=prefix, db="pg", ro_db="pg_ro", files=files)
        self.url = url
        self.raw = RawPostgres(url)
        self.victim = RawPostgres(url)
        self.victim_pid = self.victim.pid()
        self.lock_key = secrets.randbelow(1_000_000_000) + 1_000_000
        self.lo_oid = secrets.randbelow(1_000_000_000) + 2_000_000_000
        self.victim_oid = self.lo_oid + 1
        # The gateway logs in as a role of its own, so what it owns (large
        # objects) is told apart from what other clients of a shared server
        # create meanwhile. A superuser, like the usual test account, so an
        # attack the guard let through would not be stopped by a privilege.
        self.role = f"{prefix}_gw"
        parts = urlsplit(url)
        password = unquote(parts.password or "")
        netloc = self.role + (f":{quote(password, safe='')}" if password else "")
        netloc += f"@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        self.gateway_url = urlunsplit(parts._replace(netloc=netloc))
        self.role_password = password

    # setup / teardown

    def setup(self) -> None:
        t, p = self.table, self.prefix
        password = self.role_password.replace("'", "''")
        self.raw.execute(
            f"CREATE ROLE {self.role} LOGIN SUPERUSER"
            + (f" PASSWORD '{password}'" if password else "")
        )
        self.raw.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, n int)")
        self.raw.execute(f"CREATE TABLE {self.acks} (id serial PRIMARY KEY, marker text)")
        # An explicit ACL from the start, so that repair() (REVOKE) restores it.
        self.raw.execute(f"REVOKE ALL ON {t} FROM PUBLIC")
        self.seed()
        self.raw.execute(f"CREATE PROCEDURE {p}_proc() LANGUAGE sql AS $$ DELETE FROM {t} $$")
        self.raw.execute(
            f"CREATE PROCEDURE {p}_tx() LANGUAGE plpgsql AS "
            f"$$ BEGIN DELETE FROM {t}; COMMIT; END $$"
        )
        self.raw.execute(f"SELECT lo_from_bytea({self.victim_oid}, 'victim')")

    def seed(self) -> None:
        self.raw.execute(f"DELETE FROM {self.table}")
        for row in SEED:
            self.raw.execute(f"INSERT INTO {self.table} VALUES ($1, $2, $3)", *row)

    def config(self) -> str:
        url = toml_string(self.gateway_url)
        t = self.table
        return f"""
[databases.pg]
type = "postgresql"
url = {url}
min_connections = 1
max_connections = 1
statement_timeout = 5
acquire_timeout = 10

[databases.pg_ro]
type = "postgresql"
url = {url}
min_connections = 1
max_connections = 1
statement_timeout = 5
acquire_timeout = 10
read_only = true

[operations.pg_find]
database = "pg"
query = "SELECT id, name FROM {t} WHERE name = $1 ORDER BY id"
params = ["name"]

[operations.pg_by_id]
database = "pg"
query = "SELECT id FROM {t} WHERE id::text = $1"
params = ["id"]

[operations.pg_note]
database = "pg"
query = "INSERT INTO {self.acks} (marker) VALUES ($1) RETURNING marker"
params = ["marker"]
"""

    def teardown(self) -> None:
        p = self.prefix
        with contextlib.suppress(Exception):
            self.kill_pools()
        for sql in (
            f"DROP TABLE IF EXISTS {self.table}, {self.acks} CASCADE",
            f"DROP PROCEDURE IF EXISTS {p}_proc(), {p}_tx()",
        ):
            with contextlib.suppress(Exception):
                self.raw.execute(sql)
        with contextlib.suppress(Exception):
            self.drop_strays()
        with contextlib.suppress(Exception):
            for oid in (self.lo_oid, self.victim_oid):
                self.raw.execute(
                    "SELECT lo_unlink(oid) FROM pg_largeobject_metadata WHERE oid = $1", oid
                )
        with contextlib.suppress(Exception):
            self.raw.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                self.role,
            )
            wait_for(
                lambda: (
                    not self.raw.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", self.role
                    )
                ),
                timeout=10,
                what=f"the sessions of {self.role} to end",
            )
        for sql in (f"DROP OWNED BY {self.role} CASCADE", f"DROP ROLE IF EXISTS {self.role}"):
            with contextlib.suppress(Exception):
                self.raw.execute(sql)
        self.raw.close()
        self.victim.close()
        shutil.rmtree(self.files, ignore_errors=True)

    # Target

    def values(self) -> dict[str, Any]:
        return {
            "lock": self.lock_key,
            "oid": self.lo_oid,
            "victim_oid": self.victim_oid,
            "victim_pid": self.victim_pid,
        }

    def revive_victim(self) -> None:
        try:
            self.victim_pid = self.victim.pid()
        except Exception:
            with contextlib.suppress(Exception):
                self.victim.close()
            self.victim = RawPostgres(self.url)
            self.victim_pid = self.victim.pid()

    def data_expression(self) -> str:
        return (
            f"(SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), ''))"
            f" FROM {self.table} x)"
        )

    def data_sql(self) -> str:
        return f"SELECT {self.data_expression()} AS data"

    def snapshot(self) -> dict[str, Any]:
        p, t = self.prefix, self.table
        row = self.raw.fetch(
            f"""
SELECT
  (SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, '|' ORDER BY x.id), ''))
     FROM {t} x) AS data,
  (SELECT coalesce(string_agg(
       c.relname || '/' || c.relkind::text || '/' || c.relpersistence::text, ','
       ORDER BY c.relname), '') FROM pg_class c WHERE c.relname LIKE '{p}%') AS relations,
  (SELECT count(*) FROM pg_class c
     WHERE c.relpersistence = 't' AND c.relname LIKE '{p}%') AS temp_relations,
  (SELECT coalesce(string_agg(proname, ',' ORDER BY proname), '')
     FROM pg_proc WHERE proname LIKE '{p}%') AS routines,
  (SELECT coalesce(string_agg(nspname, ','), '') FROM pg_namespace
     WHERE nspname LIKE '{p}%') AS schemas,
  (SELECT coalesce(string_agg(rulename, ','), '') FROM pg_rules
     WHERE tablename LIKE '{p}%') AS rules,
  (SELECT coalesce(string_agg(attname, ',' ORDER BY attnum), '') FROM pg_attribute
     WHERE attrelid = to_regclass('{t}') AND attnum > 0 AND NOT attisdropped) AS columns,
  (SELECT relacl::text FROM pg_class WHERE oid = to_regclass('{t}')) AS acl,
  obj_description(to_regclass('{t}'), 'pg_class') AS comment,
  (SELECT coalesce(array_agg(oid ORDER BY oid), ARRAY[]::oid[]) FROM pg_largeobject_metadata
     WHERE lomowner = '{self.role}'::regrole OR oid IN ({self.lo_oid}, {self.victim_oid}))
     AS large_objects,
  (SELECT count(*) FROM pg_largeobject_metadata WHERE lomowner = '{self.role}'::regrole)
     AS large_objects_of_the_gateway,
  (SELECT md5(lo_get(oid)) FROM pg_largeobject_metadata
     WHERE oid = {self.victim_oid}) AS victim_object,
  (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {self.lock_key})
     AS advisory_locks,
  (SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE '{p}%') AS prepared_xacts,
  (SELECT count(*) FROM pg_db_role_setting) AS role_settings,
  (SELECT count(*) FROM pg_stat_activity WHERE pid = {self.victim_pid}) AS victim_alive
"""
        )[0]
        snapshot = dict(row)
        snapshot["large_objects"] = list(snapshot["large_objects"])
        snapshot["files"] = sorted(os.listdir(self.files))
        return snapshot

    def probe_sql(self) -> str:
        return f"""
SELECT
  pg_backend_pid() AS pool_id,
  current_setting('statement_timeout') AS statement_timeout,
  current_setting('lock_timeout') AS lock_timeout,
  current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction_timeout,
  current_setting('search_path') AS search_path,
  current_user::text AS current_user_name,
  session_user::text AS session_user_name,
  current_setting('role') AS role,
  current_setting('default_transaction_read_only') AS default_transaction_read_only,
  current_setting('transaction_read_only') AS transaction_read_only,
  current_setting('default_transaction_isolation') AS default_transaction_isolation,
  current_setting('transaction_isolation') AS transaction_isolation,
  current_setting('application_name') AS application_name,
  current_setting('DateStyle') AS datestyle,
  current_setting('TimeZone') AS timezone,
  current_setting('client_encoding') AS client_encoding,
  current_setting('standard_conforming_strings') AS standard_conforming_strings,
  current_setting('session_replication_role') AS session_replication_role,
  (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int
    AS temp_relations,
  (SELECT count(*) FROM pg_prepared_statements
    WHERE name NOT LIKE '\\_\\_asyncpg%')::int AS prepared_statements,
  (SELECT count(*) FROM pg_cursors WHERE is_holdable)::int AS holdable_cursors,
  (SELECT count(*) FROM pg_listening_channels())::int AS listening,
  (SELECT count(*) FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int AS advisory_locks,
  {self.data_expression()} AS data
"""

    def ack_sql(self) -> str:
        return f"INSERT INTO {self.acks} (marker) VALUES ($1)"

    def raw_execute(self, sql: str) -> None:
        self.raw.execute(sql)

    def changed_probe(self) -> dict[str, Any] | None:
        step = {
            "type": "transaction",
            "db_name": self.db,
            "queries": [
                {"query": "SET LOCAL statement_timeout = '1234ms'"},
                {"query": self.probe_sql()},
            ],
        }
        response = self.gw.batch([step], key=ADMIN)
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert result["success"], result
        row: dict[str, Any] = result["data"][1][0]
        assert row["statement_timeout"] == "1234ms"
        return row

    def echo_sql(self) -> str:
        return "SELECT $1::text AS name"

    def ack_count(self, marker: str) -> int:
        return int(self.raw.fetchval(f"SELECT count(*) FROM {self.acks} WHERE marker = $1", marker))

    def session_state(self, pool_id: Any) -> str:
        row = self.raw.fetch(
            "SELECT state, backend_xid::text AS xid, query FROM pg_stat_activity WHERE pid = $1",
            pool_id,
        )
        # Gone is fine too: the pool threw the connection away.
        if not row or (row[0]["state"] == "idle" and row[0]["xid"] is None):
            return "idle"
        return f"{row[0]['state']}, xid {row[0]['xid']}, last query {row[0]['query']!r}"

    def kill_pools(self) -> None:
        """Terminate the gateway's own backends (found by their client ports)."""
        assert self.server is not None
        port = urlsplit(self.url).port or 5432
        ports = sorted(self.server.client_ports(port))
        self.raw.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE client_port = ANY($1::int[]) AND pid <> pg_backend_pid()",
            ports,
        )

    def drop_strays(self) -> None:
        p = self.prefix
        keep = {self.table, self.acks, f"{self.acks}_id_seq", f"{self.table}_pkey"}
        keep.add(f"{self.acks}_pkey")
        for (xact,) in self.raw.fetch(f"SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{p}%'"):
            self.raw.execute(f"ROLLBACK PREPARED '{xact}'")
        for relname, relkind in self.raw.fetch(
            f"SELECT relname, relkind::text FROM pg_class WHERE relname LIKE '{p}%' "
            "AND relpersistence <> 't' AND relkind IN ('r', 'v', 'm', 'i')"
        ):
            if relname not in keep:
                kind = {"r": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "i": "INDEX"}
                self.raw.execute(f"DROP {kind[relkind]} IF EXISTS {relname} CASCADE")
        for (rule,) in self.raw.fetch(
            "SELECT rulename FROM pg_rules WHERE tablename = $1", self.table
        ):
            self.raw.execute(f"DROP RULE IF EXISTS {rule} ON {self.table}")
        for (trigger,) in self.raw.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal",
            self.table,
        ):
            self.raw.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {self.table}")
        for (schema,) in self.raw.fetch(
            f"SELECT nspname FROM pg_namespace WHERE nspname LIKE '{p}%'"
        ):
            self.raw.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for (fn,) in self.raw.fetch(
            f"SELECT oid::regprocedure::text FROM pg_proc WHERE proname LIKE '{p}%' "
            f"AND proname NOT IN ('{p}_proc', '{p}_tx')"
        ):
            self.raw.execute(f"DROP ROUTINE IF EXISTS {fn} CASCADE")

    def repair(self, before: dict[str, Any] | None) -> None:
        self.kill_pools()
        t = self.table
        if self.raw.fetchval(f"SELECT to_regclass('{t}')") is None:
            renamed = self.raw.fetchval(
                f"SELECT relname FROM pg_class WHERE relname LIKE '{self.prefix}%' "
                f"AND relname NOT IN ('{self.acks}') AND relkind = 'r' "
                f"AND relpersistence = 'p' AND relname <> '{t}' LIMIT 1"
            )
            if renamed is not None:
                self.raw.execute(f"ALTER TABLE {renamed} RENAME TO {t}")
            else:
                self.raw.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name text, n int)")
        self.drop_strays()
        for (column,) in self.raw.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attnum > 0 AND NOT attisdropped AND attname NOT IN ('id', 'name', 'n')",
            t,
        ):
            self.raw.execute(f"ALTER TABLE {t} DROP COLUMN {column}")
        self.raw.execute(f"REVOKE ALL ON {t} FROM PUBLIC")
        self.raw.execute(f"COMMENT ON TABLE {t} IS NULL")
        self.seed()
        known = set(before["large_objects"]) if before else set()
        for (oid,) in self.raw.fetch(
            "SELECT oid FROM pg_largeobject_metadata WHERE lomowner = $1::regrole OR oid = $2",
            self.role,
            self.lo_oid,
        ):
            if oid not in known and oid != self.victim_oid:
                self.raw.execute("SELECT lo_unlink($1)", oid)
        if self.raw.fetchval(
            "SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $1", self.victim_oid
        ):
            self.raw.execute(f"SELECT lo_put({self.victim_oid}, 0, 'victim')")
        else:
            self.raw.execute(f"SELECT lo_from_bytea({self.victim_oid}, 'victim')")
        for name in os.listdir(self.files):
            (self.files / name).unlink(missing_ok=True)
        self.revive_victim()
