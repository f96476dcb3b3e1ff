"""Step references: parsing, up-front refusal, resolution (no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iogate.core.result import Result
from iogate.orchestrator.refs import (
    StepReferenceError,
    collect_references,
    parse_path,
    resolve,
)

INSERTED = Result.ok([{"id": 42, "email": "a@example.com"}], rows_affected=1)
CALLED = Result.ok({"valid": True, "tags": ["x", "y"]}, status_code=200)


def test_ref_by_index_and_by_id() -> None:
    ids = {"user": 0}
    assert parse_path("0.data.0.id", at=1, ids=ids).step == 0
    ref = parse_path("user.data.0.id", at=2, ids=ids)
    assert (ref.step, ref.path) == (0, ("data", "0", "id"))


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        ("1.data", 1, "does not run before it"),  # self reference: a cycle of one
        ("3.data", 1, "does not run before it"),  # forward reference
        ("nobody.data", 2, "names no step"),
        ("0..id", 1, "empty path segment"),
        ("", 1, "non-empty"),
    ],
)
def test_bad_references_are_refused(text: str, at: int, message: str) -> None:
    with pytest.raises(StepReferenceError, match=message):
        parse_path(text, at=at, ids={})


def test_collect_finds_refs_and_fmt_placeholders_at_any_depth() -> None:
    op = {
        "type": "api",
        "endpoint": {"$fmt": "/users/{0.data.0.id}/events/{1.status_code}"},
        "data": {"nested": [{"$ref": "0.data.0.email"}]},
    }
    refs = collect_references(op, at=2, ids={})
    assert sorted(r.text for r in refs) == ["0.data.0.email", "0.data.0.id", "1.status_code"]


def test_objects_with_other_keys_are_plain_data() -> None:
    op = {"data": {"$ref": "5.data", "other": 1}, "text": "{0.data} stays as is"}
    assert collect_references(op, at=1, ids={}) == []
    assert resolve(op, [INSERTED], at=1, ids={}) == op


def test_resolve_keeps_json_types_and_formats_strings() -> None:
    op = {
        "params": {"1": {"$ref": "0.data.0.id"}, "2": {"$ref": "1.data.tags"}},
        "key": {"$fmt": "user:{0.data.0.id}:{1.data.valid} {{literal}}"},
    }
    out = resolve(op, [INSERTED, CALLED], at=2, ids={})
    assert out == {"params": {"1": 42, "2": ["x", "y"]}, "key": "user:42:true {literal}"}


def test_negative_index_and_result_fields() -> None:
    assert resolve({"$ref": "1.data.tags.-1"}, [INSERTED, CALLED], at=2, ids={}) == "y"
    assert resolve({"$ref": "0.rows_affected"}, [INSERTED], at=1, ids={}) == 1


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("0.data.3.id", "has 1 item"),
        ("0.data.0.missing", "no key 'missing'"),
        ("0.data.first", "not an index"),
        ("0.data.0.id.deeper", "cannot look up"),
    ],
)
def test_missing_paths_name_the_problem(path: str, message: str) -> None:
    with pytest.raises(StepReferenceError, match=message):
        resolve({"$ref": path}, [INSERTED], at=1, ids={})


def test_fmt_must_be_a_string() -> None:
    with pytest.raises(StepReferenceError, match=r"\$fmt must be a string"):
        collect_references({"$fmt": 3}, at=1, ids={})


@given(st.integers(min_value=0, max_value=50), st.integers(min_value=0, max_value=50))
def test_only_strictly_earlier_steps_are_accepted(step: int, at: int) -> None:
    if step < at:
        assert parse_path(f"{step}.data", at=at, ids={}).step == step
    else:
        with pytest.raises(StepReferenceError):
            parse_path(f"{step}.data", at=at, ids={})
