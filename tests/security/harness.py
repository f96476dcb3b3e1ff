"""The invariant every hostile request is checked against, and the request shapes.

An :class:`Attack` is one SQL text (a template: ``{t}`` is the real table,
``{file}`` a fresh path in a directory the database server can write...).
A :class:`Target` is one backend as the gateway serves it and, beside it, as
a raw driver connection sees it. After each hostile request
:meth:`Target.check` asserts, in this order:

1. the raw snapshot is unchanged: rows of the real table, the objects named
   with the run's prefix, files in the attack directory, large objects,
   advisory/user locks, a victim connection still alive;
2. the writer, on the same one-connection pool, sees the session as it was
   at start-up (settings, role, read-only flags, no temp table, no prepared
   statement, no listener...) and the real table's rows, and its pooled
   connection goes back idle, not inside a transaction;
3. backend extras: SQLite's reader connection (a separate one) holds no
   temp table and neither connection sees an attached database; MariaDB's
   user variables (read by the admin, whose SQL is not guarded) are unset;
4. the writer's INSERT answered 200 is committed (read back raw).

When a check fails the target is repaired (pooled sessions killed, seeded
rows restored, stray objects and files removed) before the failure is
re-raised, so one hole in the guard fails one test, not every later one.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.support import (
    FORBIDDEN,
    READER,
    REFUSED_WRITE,
    WRITER,
    Gateway,
    GatewayProcess,
    assert_forbidden_result,
    assert_refused,
    assert_scope_refused,
    wait_for,
)

SEED = [(1, "alpha", 10), (2, "beta", 20), (3, "gamma", 30), (4, "o'neil; --", 40)]


@dataclass(frozen=True)
class Attack:
    """One hostile statement."""

    cls: str
    name: str
    sql: str
    # A data write: only a key without write access (or a read_only database)
    # is refused, with forbidden_statement or read_only.
    writes: bool = False
    # A word the refusal's message must contain (it names the statement kind).
    names: str | None = None

    @property
    def id(self) -> str:
        return f"{self.cls}-{self.name}"


def params(attacks: Sequence[Attack]) -> list[Any]:
    """One pytest id per attack."""
    ids = [a.id for a in attacks]
    duplicated = {i for i in ids if ids.count(i) > 1}
    assert not duplicated, duplicated
    return [pytest.param(a, id=a.id) for a in attacks]


def first_of_each_class(attacks: Sequence[Attack]) -> list[Attack]:
    return per_class(attacks, 1)


def per_class(attacks: Sequence[Attack], count: int) -> list[Attack]:
    """The first ``count`` attacks of each class: the routes that repeat the
    direct tests (batches, transactions) take several members of every class,
    not all of them, to keep the suite's run time down."""
    taken: dict[str, int] = {}
    chosen = []
    for attack in attacks:
        if taken.get(attack.cls, 0) < count:
            taken[attack.cls] = taken.get(attack.cls, 0) + 1
            chosen.append(attack)
    return chosen


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two snapshots or probes, key by key."""
    keys = sorted(set(before) | set(after))
    return {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}


class Target(abc.ABC):
    """One backend: a writable database and a ``read_only = true`` one, both
    served by the gateway with one pooled connection, and a raw connection."""

    dialect: str
    # Keys of the writer's probe that may differ between calls.
    volatile = frozenset({"pool_id"})

    def __init__(self, *, prefix: str, db: str, ro_db: str, files: Path) -> None:
        self.prefix = prefix
        self.db = db
        self.ro_db = ro_db
        self.files = files
        self.table = f"{prefix}_data"
        self.acks = f"{prefix}_acks"
        self.server: GatewayProcess | None = None
        self.baselines: dict[str, dict[str, Any]] = {}
        # Markers of every write the gateway acknowledged (200), to read back
        # at the end of the module as well as right away.
        self.acknowledged: list[str] = []

    # -- what each backend provides ----------------------------------------

    @abc.abstractmethod
    def setup(self) -> None:
        """Create and seed the table and the acks table (raw connection)."""

    @abc.abstractmethod
    def config(self) -> str:
        """``[databases.*]`` and ``[operations.*]`` tables for iogate.toml."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Drop every object with the prefix; close raw connections."""

    @abc.abstractmethod
    def values(self) -> dict[str, Any]:
        """Template values for attacks (besides t, acks, prefix and file)."""

    @abc.abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """What the database holds, read raw; ``data`` is the table's checksum."""

    @abc.abstractmethod
    def probe_sql(self) -> str:
        """A SELECT returning one row: session settings, ``data`` (the same
        checksum as the snapshot's) and ``pool_id`` (the server's id of the
        pooled connection)."""

    @abc.abstractmethod
    def data_sql(self) -> str:
        """A SELECT returning one row whose ``data`` is the table's checksum."""

    @abc.abstractmethod
    def ack_sql(self) -> str:
        """An INSERT of one marker (one placeholder) into the acks table."""

    @abc.abstractmethod
    def ack_count(self, marker: str) -> int:
        """Rows of the acks table holding ``marker`` (read raw)."""

    @abc.abstractmethod
    def echo_sql(self) -> str:
        """A SELECT returning its one parameter as a text column ``name``."""

    @abc.abstractmethod
    def session_state(self, pool_id: Any) -> str:
        """``"idle"`` when that pooled connection is idle outside any
        transaction (or gone), else what it is doing."""

    @abc.abstractmethod
    def repair(self, before: dict[str, Any] | None) -> None:
        """Kill the pooled sessions and restore the seeded state."""

    def extra_session_checks(self, db: str) -> None:  # noqa: B027 - optional hook
        """Backend-specific checks on the pooled session after an attack."""

    # -- helpers -------------------------------------------------------------

    @property
    def gw(self) -> Gateway:
        assert self.server is not None, "the gateway is not running"
        return self.server.gateway

    def render(self, sql: str) -> str:
        file = self.files / f"{uuid.uuid4().hex}.out"
        return sql.format_map(
            {"t": self.table, "acks": self.acks, "prefix": self.prefix, "file": file}
            | self.values()
        )

    def writable(self, db: str) -> bool:
        return db == self.db

    def probe(self, db: str) -> dict[str, Any]:
        return self.gw.rows(db, self.probe_sql(), key=WRITER)[0]

    def capture_baselines(self) -> None:
        for db in (self.db, self.ro_db):
            self.baselines[db] = self.probe(db)
            wait_for(
                lambda db=db: self.session_state(self.baselines[db]["pool_id"]) == "idle",
                timeout=5,
                what="the pooled connection to go idle",
            )

    def ack(self, db: str) -> str:
        marker = f"ack-{uuid.uuid4().hex}"
        response = self.gw.sql(db, self.ack_sql(), [marker], key=WRITER)
        assert response.status_code == 200, f"writer's INSERT: {response.text}"
        assert response.json()["success"] is True
        assert self.ack_count(marker) == 1, "an INSERT answered 200 is not in the table"
        self.acknowledged.append(marker)
        return marker

    def assert_acknowledged_writes_kept(self) -> None:
        assert self.acknowledged, "no write was acknowledged in this module"
        missing = [m for m in self.acknowledged if self.ack_count(m) != 1]
        assert not missing, f"{len(missing)} acknowledged writes are gone: {missing[:5]}"

    def ack_op(self, marker: str) -> dict[str, Any]:
        return {"type": "database", "db_name": self.db, "query": self.ack_sql(), "params": [marker]}

    # -- the invariant -------------------------------------------------------

    def check(self, before: dict[str, Any], db: str) -> None:
        """Everything the module docstring lists, on the pool of ``db``."""
        after = self.snapshot()
        assert after == before, f"the database changed: {differences(before, after)}"
        probe = self.probe(db)
        expected = {k: v for k, v in self.baselines[db].items() if k not in self.volatile}
        seen = {k: v for k, v in probe.items() if k not in self.volatile}
        assert seen == expected, (
            f"the pooled session differs from a fresh one: {differences(expected, seen)}"
        )
        assert probe["data"] == after["data"], "the writer does not read the real table"
        states: list[str] = []

        def idle() -> bool:
            states.append(self.session_state(probe["pool_id"]))
            return states[-1] == "idle"

        try:
            wait_for(idle, timeout=5, what="the pooled connection to go idle")
        except AssertionError:
            raise AssertionError(
                f"the pooled connection stays busy after the writer's request: {states[-1]}"
            ) from None
        self.extra_session_checks(db)
        if self.writable(db):
            self.ack(db)

    @contextmanager
    def repaired_on_failure(self, before: dict[str, Any] | None = None) -> Iterator[None]:
        try:
            yield
        except BaseException:
            if not self.still_clean(before):
                self.repair(before)
                self.settle()
            raise

    def still_clean(self, before: dict[str, Any] | None) -> bool:
        """After a failure: does the invariant hold anyway on both pools (a
        wrong status with nothing changed)? Then no repair (which for SQLite
        means a restart) is needed."""
        if before is None:
            return False
        try:
            for db in (self.db, self.ro_db):
                self.check(before, db)
        except Exception:
            return False
        return True

    def fresh_snapshot(self) -> dict[str, Any]:
        """The snapshot before a request; if an earlier failure left the target
        unreadable (a lock, a dropped table), repair it first."""
        try:
            return self.snapshot()
        except Exception:
            self.repair(None)
            self.settle()
            return self.snapshot()

    def settle(self) -> None:
        """After a repair: wait until each pool serves the writer again."""
        for db in (self.db, self.ro_db):

            def answers(db: str = db) -> bool:
                try:
                    response = self.gw.sql(db, self.probe_sql(), key=WRITER, timeout=10)
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            wait_for(answers, timeout=15, what=f"{db} to serve again")

    # -- the invariant can fail ---------------------------------------------

    def changed_probe(self) -> dict[str, Any] | None:
        """The probe run by the admin under a changed setting that does not
        outlive the request (None where the backend has no such form)."""
        return None

    def assert_invariant_can_fail(self) -> None:
        """A changed row, a stray file and a changed setting are each seen."""
        for name, mutate in (
            ("a changed row", lambda: self.raw_execute(f"UPDATE {self.table} SET n = n + 1")),
            ("a stray file", lambda: (self.files / "stray.out").write_text("x")),
        ):
            before = self.snapshot()
            mutate()
            try:
                with pytest.raises(AssertionError, match="the database changed"):
                    self.check(before, self.db)
            finally:
                self.repair(before)
                self.settle()
            assert self.snapshot() == before, f"repair after {name}"
        changed = self.changed_probe()
        if changed is not None:
            expected = {k: v for k, v in self.baselines[self.db].items() if k not in self.volatile}
            assert {k: v for k, v in changed.items() if k not in self.volatile} != expected
        self.check(self.snapshot(), self.db)

    @abc.abstractmethod
    def raw_execute(self, sql: str) -> None:
        """Run ``sql`` on the raw connection (autocommit)."""

    # -- request shapes ------------------------------------------------------

    def direct(self, attack: Attack, *, key: str, db: str) -> None:
        """``POST /database/execute`` with the attack; refused, nothing changed."""
        before = self.fresh_snapshot()
        response = self.gw.sql(db, self.render(attack.sql), key=key)
        with self.repaired_on_failure(before):
            allow = REFUSED_WRITE if attack.writes else frozenset({FORBIDDEN})
            assert_refused(response, allow=allow)
            if attack.names and response.json()["error_type"] == FORBIDDEN:
                error = response.json()["error"].lower()
                assert attack.names.lower() in error, f"message does not name {attack.names}"
            self.check(before, db)

    def batch(self, attack: Attack, *, atomic: bool) -> None:
        """The writer's batch: ack, attack, ack. Not atomic: the acks commit;
        atomic: nothing commits."""
        before = self.fresh_snapshot()
        first, last = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
        hostile = {"type": "database", "db_name": self.db, "query": self.render(attack.sql)}
        ops = [self.ack_op(first), hostile, self.ack_op(last)]
        response = self.gw.batch(ops, key=WRITER, atomic=atomic)
        with self.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert len(results) == 3, results
            assert_forbidden_result(results[1])
            if atomic:
                assert not results[0]["success"], results[0]
                assert not results[2]["success"], results[2]
                assert self.ack_count(first) == 0, "an atomic batch with a refusal committed"
                assert self.ack_count(last) == 0, "an atomic batch with a refusal committed"
            else:
                assert results[0]["success"], results[0]
                assert results[2]["success"], results[2]
                assert self.ack_count(first) == 1, "an acknowledged batch write is missing"
                assert self.ack_count(last) == 1, "an acknowledged batch write is missing"
                self.acknowledged += [first, last]
            self.check(before, self.db)

    def transaction_step(self, attack: Attack) -> None:
        """A ``transaction`` operation with the attack between two INSERTs:
        refused, and the whole transaction rolled back."""
        before = self.fresh_snapshot()
        first, last = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
        queries = [
            {"query": self.ack_sql(), "params": [first]},
            {"query": self.render(attack.sql)},
            {"query": self.ack_sql(), "params": [last]},
        ]
        step = {"type": "transaction", "db_name": self.db, "queries": queries}
        response = self.gw.batch([step], key=WRITER)
        with self.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            assert_forbidden_result(result)
            assert self.ack_count(first) == 0, "a refused transaction committed"
            assert self.ack_count(last) == 0, "a refused transaction committed"
            self.check(before, self.db)

    def read_only_batch(self, attack: Attack) -> None:
        """The writer's batch on the read_only database: the write is refused."""
        before = self.fresh_snapshot()
        hostile = {"type": "database", "db_name": self.ro_db, "query": self.render(attack.sql)}
        response = self.gw.batch([hostile], key=WRITER)
        with self.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            (result,) = response.json()["results"]
            assert result["success"] is False, result
            assert result["error_type"] in REFUSED_WRITE, result
            self.check(before, self.ro_db)

    def reader_batch(self, attack: Attack) -> None:
        """SQL in a batch needs write: the reader's batch is refused whole."""
        before = self.fresh_snapshot()
        hostile = {"type": "database", "db_name": self.db, "query": self.render(attack.sql)}
        for atomic in (False, True):
            response = self.gw.batch([hostile], key=READER, atomic=atomic)
            with self.repaired_on_failure(before):
                assert_scope_refused(response)
        step = {"type": "transaction", "db_name": self.db, "queries": [{"query": hostile["query"]}]}
        response = self.gw.batch([step], key=READER)
        with self.repaired_on_failure(before):
            assert_scope_refused(response)
            self.check(before, self.db)
