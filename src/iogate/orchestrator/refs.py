"""Step references: one batch operation using an earlier one's output.

Two forms, both explicit JSON objects so that ordinary user data (a string
that happens to contain braces or a dollar sign) is never rewritten:

``{"$ref": "0.data.0.id"}``
    replaced by the value found at that path; the value keeps its JSON type.
``{"$fmt": "user:{0.data.0.id}"}``
    a string with ``{path}`` placeholders, each replaced by the value's text
    (``{{`` and ``}}`` are literal braces); for endpoint fragments and keys.

A path starts with a step: its index in the batch (``0``) or the ``id`` the
operation was given (``{"id": "user", ...}`` -> ``user.data.0.id``); the rest
walks that step's Result as served (``data``, ``rows_affected``,
``status_code``, ...), a number indexing a list. Only earlier steps can be
referenced, so a batch cannot contain a cycle; a forward or unknown
reference is refused before anything runs.

Walking and resolving are iterative: an operation nested as deep as a client
can make it never exhausts the interpreter's stack.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from iogate.core.errors import InvalidRequestError
from iogate.core.result import Result

__all__ = [
    "FMT_KEY",
    "REF_KEY",
    "Reference",
    "StepReferenceError",
    "collect_references",
    "rebase",
    "resolve",
]

REF_KEY = "$ref"
FMT_KEY = "$fmt"
_STEP_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
# A list index in a path: ASCII digits (str.isdigit also takes "²" and "٣"),
# short enough that int() is cheap and never refuses.
_INDEX = re.compile(r"-?[0-9]{1,18}")
# A step index: at most this many digits (a batch is far shorter).
_STEP_DIGITS = 9


class StepReferenceError(InvalidRequestError):
    """A reference that cannot be followed (bad syntax, forward, missing path)."""


@dataclass(frozen=True, slots=True)
class Reference:
    """One parsed ``step.path...`` reference."""

    text: str
    step: int
    path: tuple[str, ...]


def is_step_id(value: object) -> bool:
    return isinstance(value, str) and _STEP_ID.fullmatch(value) is not None


def _shown(text: str) -> str:
    """``repr(text)``, cut short: an error never echoes a huge reference."""
    return repr(text) if len(text) <= 80 else f"{text[:80]!r}... ({len(text)} characters)"


def parse_path(text: object, *, at: int, ids: Mapping[str, int]) -> Reference:
    """Parse ``text`` for the operation at index ``at``; refuse forward references."""
    if not isinstance(text, str) or not text.strip():
        raise StepReferenceError(f"operation {at}: a reference must be a non-empty string")
    head, *path = text.strip().split(".")
    if head.isascii() and head.isdigit() and len(head) <= _STEP_DIGITS:
        step = int(head)
    elif head in ids:
        step = ids[head]
    else:
        raise StepReferenceError(
            f"operation {at}: reference {_shown(text)} names no step {_shown(head)}"
        )
    if step >= at:
        raise StepReferenceError(
            f"operation {at}: reference {_shown(text)} points to operation {step}, "
            "which does not run before it (only earlier operations can be referenced)"
        )
    if any(part == "" for part in path):
        raise StepReferenceError(
            f"operation {at}: reference {_shown(text)} has an empty path segment"
        )
    return Reference(text=text, step=step, path=tuple(path))


def _fmt_fields(template: str, *, at: int) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as exc:
        raise StepReferenceError(
            f"operation {at}: bad $fmt template {_shown(template)}: {exc}"
        ) from None


def collect_references(value: Any, *, at: int, ids: Mapping[str, int]) -> list[Reference]:
    """Every reference inside ``value``, validated (raises StepReferenceError)."""
    found: list[Reference] = []
    if _may_hold_references(value):
        _walk(value, at, ids, found)
    return found


def _may_hold_references(value: Any) -> bool:
    """A cheap pre-check: most operations hold no reference at all."""
    try:
        encoded = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return True
    return b'"$ref"' in encoded or b'"$fmt"' in encoded


def _walk(value: Any, at: int, ids: Mapping[str, int], found: list[Reference]) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, Mapping):
            marker = _marker(item)
            if marker == REF_KEY:
                found.append(parse_path(item[REF_KEY], at=at, ids=ids))
            elif marker == FMT_KEY:
                template = item[FMT_KEY]
                if not isinstance(template, str):
                    raise StepReferenceError(f"operation {at}: $fmt must be a string")
                found.extend(parse_path(f, at=at, ids=ids) for f in _fmt_fields(template, at=at))
            else:
                pending.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            pending.extend(reversed(item))


def _marker(value: Mapping[Any, Any]) -> str | None:
    """``$ref``/``$fmt`` when ``value`` is exactly such an object."""
    if len(value) == 1:
        (key,) = value
        if key in (REF_KEY, FMT_KEY):
            return str(key)
    return None


def resolve(
    value: Any, results: Sequence[Result | None], *, at: int, ids: Mapping[str, int]
) -> Any:
    """``value`` with every reference replaced from the finished ``results``.

    The referenced steps must have succeeded (the batch checks that first);
    a path that does not exist in a step's output raises StepReferenceError.
    Mappings and lists are copied, tuples stay tuples; ``value`` is unchanged.
    """
    root: list[Any] = [value]
    # (container, slot, item): ``item`` is to be resolved into container[slot].
    pending: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    tuples: list[tuple[Any, Any, list[Any]]] = []  # built as lists, frozen at the end
    while pending:
        container, slot, item = pending.pop()
        if isinstance(item, Mapping):
            marker = _marker(item)
            if marker == REF_KEY:
                container[slot] = lookup(parse_path(item[REF_KEY], at=at, ids=ids), results)
            elif marker == FMT_KEY:
                container[slot] = _format(item[FMT_KEY], results, at=at, ids=ids)
            else:
                copy = dict(item)
                container[slot] = copy
                pending.extend((copy, k, v) for k, v in reversed(copy.items()))
        elif isinstance(item, list | tuple):
            items = list(item)
            container[slot] = items
            if isinstance(item, tuple):
                tuples.append((container, slot, items))
            pending.extend((items, i, v) for i, v in reversed(list(enumerate(items))))
    # Inner tuples were met after their containers: freeze them first.
    for container, slot, items in reversed(tuples):
        container[slot] = tuple(items)
    return root[0]


def _format(
    template: str, results: Sequence[Result | None], *, at: int, ids: Mapping[str, int]
) -> str:
    out: list[str] = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if field:
            found = lookup(parse_path(field, at=at, ids=ids), results)
            out.append(found if isinstance(found, str) else _text(found))
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def lookup(ref: Reference, results: Sequence[Result | None]) -> Any:
    """The value at ``ref`` in its step's Result (``to_dict`` shape)."""
    result = results[ref.step]
    if result is None:
        raise StepReferenceError(f"reference {_shown(ref.text)}: operation {ref.step} has not run")
    current: Any = result.to_dict()
    walked = str(ref.step)
    for part in ref.path:
        if isinstance(current, Mapping):
            if part not in current:
                raise StepReferenceError(
                    f"reference {_shown(ref.text)}: no key {part!r} in {walked}"
                )
            current = current[part]
        elif isinstance(current, list | tuple):
            if not _is_index(part):
                raise StepReferenceError(
                    f"reference {_shown(ref.text)}: {walked} is a list; {part!r} is not an index"
                )
            index = int(part)
            if not -len(current) <= index < len(current):
                raise StepReferenceError(
                    f"reference {_shown(ref.text)}: {walked} has {len(current)} item(s), "
                    f"no index {index}"
                )
            current = current[index]
        else:
            raise StepReferenceError(
                f"reference {_shown(ref.text)}: {walked} is {type(current).__name__}, "
                f"cannot look up {part!r}"
            )
        walked = f"{walked}.{part}"
    return current


def _is_index(part: str) -> bool:
    return _INDEX.fullmatch(part) is not None


def rebase(value: Any, offset: int) -> Any:
    """``value`` with each reference by step *index* moved down by ``offset``.

    For running operations ``offset..`` of a batch as a batch of their own
    (a job's chunk): ``{"$ref": "251.data"}`` becomes ``{"$ref": "1.data"}``
    for offset 250, in ``$fmt`` fields too; references by ``id`` are left as
    they are. The references were validated when the whole batch was (none
    points before ``offset`` in a chunk: the chunking keeps them together).
    ``value`` is unchanged; containers on the way are copied.
    """
    if offset == 0 or not _may_hold_references(value):
        return value
    root: list[Any] = [value]
    pending: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while pending:
        container, slot, item = pending.pop()
        if isinstance(item, Mapping):
            marker = _marker(item)
            if marker == REF_KEY and isinstance(item[REF_KEY], str):
                container[slot] = {REF_KEY: _rebased_path(item[REF_KEY], offset)}
            elif marker == FMT_KEY and isinstance(item[FMT_KEY], str):
                container[slot] = {FMT_KEY: _rebased_template(item[FMT_KEY], offset)}
            else:
                copy = dict(item)
                container[slot] = copy
                pending.extend((copy, k, v) for k, v in copy.items())
        elif isinstance(item, list | tuple):
            items = list(item)
            container[slot] = items if isinstance(item, list) else item
            if isinstance(item, list):
                pending.extend((items, i, v) for i, v in enumerate(items))
    return root[0]


def _rebased_path(text: str, offset: int) -> str:
    head, dot, rest = text.strip().partition(".")
    if head.isascii() and head.isdigit() and len(head) <= _STEP_DIGITS:
        return f"{int(head) - offset}{dot}{rest}"
    return text


def _rebased_template(template: str, offset: int) -> str:
    out: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if field is not None:
            out.append("{" + _rebased_path(field, offset))
            if conversion:
                out.append("!" + conversion)
            if spec:
                out.append(":" + spec)
            out.append("}")
    return "".join(out)
