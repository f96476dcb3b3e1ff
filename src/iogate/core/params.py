"""Parameter normalisation: every accepted shape becomes a positional tuple.

The seeds pass parameters as ``{"1": a, "2": b}`` for ``$1, $2`` (PostgreSQL)
or ``?, ?`` (SQLite); lists and tuples are accepted too. Keys must be the whole
numbers 1..N with no gap; anything else is a :class:`ParameterError` that says
exactly what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from iogate.core.errors import ParameterError

__all__ = ["count_placeholders", "normalize_params"]

Params = Mapping[str, Any] | Mapping[int, Any] | Sequence[Any] | None


def normalize_params(params: Params) -> tuple[Any, ...]:
    """Turn ``params`` into a positional tuple, or raise ParameterError."""
    if params is None:
        return ()
    if isinstance(params, tuple):
        return params
    if isinstance(params, list):
        return tuple(params)
    if isinstance(params, Mapping):
        return _from_mapping(params)
    if isinstance(params, (str, bytes, bytearray)):
        raise ParameterError(
            f"params must be a mapping like {{'1': value}} or a list, not {type(params).__name__}"
        )
    if isinstance(params, Sequence):
        return tuple(params)
    raise ParameterError(
        f"params must be a mapping like {{'1': value}} or a list, not {type(params).__name__}"
    )


def _from_mapping(params: Mapping[Any, Any]) -> tuple[Any, ...]:
    if not params:
        return ()
    positions: dict[int, Any] = {}
    for key, value in params.items():
        position = _position(key)
        if position in positions:
            raise ParameterError(f"parameter {position} is given twice")
        positions[position] = value
    highest = max(positions)
    missing = [str(i) for i in range(1, highest + 1) if i not in positions]
    if missing:
        raise ParameterError(
            f"parameter keys must run 1..{highest} without a gap; missing {', '.join(missing)}"
        )
    return tuple(positions[i] for i in range(1, highest + 1))


def _position(key: Any) -> int:
    if isinstance(key, bool):
        raise ParameterError(f"parameter key {key!r} is not a position (use '1', '2', ...)")
    if isinstance(key, int):
        position = key
    elif isinstance(key, str) and key.strip().lstrip("$").isdigit():
        position = int(key.strip().lstrip("$"))
    else:
        raise ParameterError(f"parameter key {key!r} is not a position (use '1', '2', ...)")
    if position < 1:
        raise ParameterError(f"parameter key {key!r}: positions start at 1")
    return position


_DOLLAR = re.compile(r"\$(\d+)")
# Strip string literals, quoted identifiers and comments before counting, so
# '$1' inside a literal or '?' inside a comment is not taken for a placeholder.
_NOT_CODE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def count_placeholders(query: str, style: str) -> int | None:
    """Placeholders a query expects: highest ``$n`` or number of ``?``.

    Returns None when the query cannot be analysed cheaply (dollar-quoted
    bodies), in which case the database's own check is the authority.
    """
    if "$$" in query:
        return None
    code = _NOT_CODE.sub(" ", query)
    if style == "dollar":
        numbers = [int(n) for n in _DOLLAR.findall(code)]
        return max(numbers, default=0)
    if style == "qmark":
        return code.count("?")
    return None


def check_count(query: str, args: tuple[Any, ...], style: str) -> None:
    """Raise ParameterError when the number of args cannot match the query."""
    expected = count_placeholders(query, style)
    if expected is not None and expected != len(args):
        raise ParameterError(
            f"query expects {expected} parameter{'s' if expected != 1 else ''}, got {len(args)}"
        )
