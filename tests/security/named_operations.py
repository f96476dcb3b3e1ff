"""Named operations (``[operations.NAME]``): trusted SQL from the config, which
hostile input reaches only as bound parameters.

Each target configures ``DB_find`` (a SELECT by name), ``DB_by_id`` (a SELECT
comparing the id as text) and ``DB_note`` (an INSERT into the acks table);
the writer (``ops:*``) calls them with hostile values, directly and as batch
steps, one of them through a ``$ref`` to an earlier step's output.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.security.harness import Target
from tests.security.support import READER, WRITER

HOSTILE_VALUES = {
    "semicolon-drop": "1; DROP TABLE {t}",
    "quote-delete": "'; DELETE FROM {t}; --",
    "or-true": "x' OR '1'='1",
    "dollar-quote": "$$; DELETE FROM {t}; $$",
    "versioned-comment": "/*! DELETE FROM {t} */",
    "backslash-quote": "\\'; DELETE FROM {t}; -- ",
    "qmark": "?; DELETE FROM {t}",
    "dollar-placeholder": "$1",
    "percent-s": "%s",
    "transaction-control": "ROLLBACK; COMMIT; SET statement_timeout = 0",
    "comment-hash": "x' # \n; DELETE FROM {t}",
    "unicode-quote": "\u2019; DELETE FROM {t}; \u02bc",
    "control-chars": "a\nb\r\nc\t;\x1a",
    "union": "1 UNION SELECT 1, name FROM {t}",
    "json-ref-lookalike": '{{"$ref": "0.data"}}',
}


def hostile_values() -> list[Any]:
    return [pytest.param(value, id=name) for name, value in HOSTILE_VALUES.items()]


class NamedOperations:
    """``[operations.DB_find|DB_by_id|DB_note]`` of a target, called with
    hostile parameters by the writer (``ops:*``)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.find = f"{target.db}_find"
        self.by_id = f"{target.db}_by_id"
        self.note = f"{target.db}_note"

    def value(self, template: str) -> str:
        return template.replace("{t}", self.target.table).replace("{{", "{").replace("}}", "}")

    def find_matches_nothing(self, template: str) -> None:
        target = self.target
        before = target.fresh_snapshot()
        response = target.gw.operation(self.find, {"name": self.value(template)}, key=WRITER)
        with target.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            assert response.json()["data"] == [], "a parameter was read as SQL"
            target.check(before, target.db)

    def by_id_is_a_value(self, template: str) -> None:
        target = self.target
        before = target.fresh_snapshot()
        response = target.gw.operation(self.by_id, {"id": self.value(template)}, key=WRITER)
        with target.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            assert response.json()["data"] == []
            control = target.gw.operation(self.by_id, {"id": "1"}, key=WRITER)
            assert control.json()["data"] == [{"id": 1}], control.text
            target.check(before, target.db)

    def note_stores_it_verbatim(self, template: str) -> None:
        target = self.target
        before = target.fresh_snapshot()
        marker = f"{uuid.uuid4().hex} {self.value(template)}"
        response = target.gw.operation(self.note, {"marker": marker}, key=WRITER)
        with target.repaired_on_failure(before):
            assert response.status_code == 200, response.text
            assert target.ack_count(marker) == 1, "the value was not stored as given"
            target.acknowledged.append(marker)
            target.check(before, target.db)

    def in_a_batch(self, template: str, *, atomic: bool) -> None:
        """As batch steps, one taking the hostile value through a ``$ref``."""
        target = self.target
        before = target.fresh_snapshot()
        value = self.value(template)
        token = uuid.uuid4().hex
        ops = [
            {
                "id": "src",
                "type": "database",
                "db_name": target.db,
                "query": target.echo_sql(),
                "params": [value],
            },
            {"type": "operation", "name": self.find, "params": {"name": value}},
            {
                "type": "operation",
                "name": self.find,
                "params": {"name": {"$ref": "src.data.0.name"}},
            },
            {"type": "operation", "name": self.note, "params": {"marker": f"{token} {value}"}},
            {
                "type": "operation",
                "name": self.note,
                "params": {"marker": {"$fmt": token + "-ref {src.data.0.name}"}},
            },
        ]
        response = target.gw.batch(ops, key=WRITER, atomic=atomic)
        with target.repaired_on_failure(before):
            if atomic and response.status_code == 422:
                # Named operations may not be allowed in an atomic batch: then
                # it is refused whole and nothing ran.
                assert target.ack_count(f"{token} {value}") == 0
                target.check(before, target.db)
                return
            assert response.status_code == 200, response.text
            results = response.json()["results"]
            assert [r["success"] for r in results] == [True] * 5, results
            assert results[0]["data"] == [{"name": value}]
            assert results[1]["data"] == []
            assert results[2]["data"] == []
            assert target.ack_count(f"{token} {value}") == 1
            assert target.ack_count(f"{token}-ref {value}") == 1
            target.check(before, target.db)

    def odd_shapes(self) -> None:
        """Parameter names and types a client controls: 422 or a plain value."""
        target = self.target
        before = target.fresh_snapshot()
        with target.repaired_on_failure(before):
            extra = {"name": "x", f"name; DROP TABLE {target.table}": 1}
            assert target.gw.operation(self.find, extra, key=WRITER).status_code == 422
            assert target.gw.operation(self.find, {}, key=WRITER).status_code == 422
            for odd in (["a", "b"], {"a": 1}, 1e308, None, True, "x" * 5000):
                response = target.gw.operation(self.find, {"name": odd}, key=WRITER)
                assert response.status_code in (200, 400, 422), response.text
                if response.status_code == 200:
                    assert response.json()["data"] == []
            unknown = target.gw.operation(f"{self.find}; DROP TABLE x", {}, key=WRITER)
            assert unknown.status_code == 404
            reader = target.gw.operation(self.find, {"name": "alpha"}, key=READER)
            assert reader.status_code == 403
            target.check(before, target.db)
