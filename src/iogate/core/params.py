"""Parameter normalisation: every accepted shape becomes a positional tuple.

The seeds pass parameters as ``{"1": a, "2": b}`` for ``$1, $2`` (PostgreSQL)
or ``?, ?`` (SQLite); lists and tuples are accepted too. Keys must be the whole
numbers 1..N with no gap, written in ASCII digits (``"1"`` or ``"$1"``, no
sign, space or other numeral); anything else is a :class:`ParameterError`
that says exactly what is wrong.

How many parameters, and how high a position, is bounded by ``max_params``
(default :data:`MAX_PARAMS`, the smallest maximum of the supported
databases). The bound is checked before anything is built, so a position
like ``{"10000000": 1}`` costs no more to refuse than ``{"1": 1}`` to accept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from iogate.core.errors import ParameterError

__all__ = [
    "MAX_PARAMS",
    "check_count",
    "check_params_limit",
    "count_placeholders",
    "normalize_params",
]

Params = Mapping[str, Any] | Mapping[int, Any] | Sequence[Any] | None

MAX_PARAMS = 32_766
"""Highest parameter position the library binds: SQLite's limit (32766 since
3.32), below PostgreSQL's (32767) and MariaDB's (65535)."""

# How many missing positions an error message names before it stops counting.
_SHOWN_MISSING = 5


def normalize_params(params: Params, *, max_params: int = MAX_PARAMS) -> tuple[Any, ...]:
    """Turn ``params`` into a positional tuple, or raise ParameterError."""
    if params is None:
        return ()
    if type(params) is list or isinstance(params, tuple | list):
        if len(params) > max_params:
            _check_count(len(params), max_params)
        return tuple(params)
    if isinstance(params, Mapping):
        return _from_mapping(params, max_params)
    if isinstance(params, str | bytes | bytearray):
        raise ParameterError(
            f"params must be a mapping like {{'1': value}} or a list, not {type(params).__name__}"
        )
    if isinstance(params, Sequence):
        _check_count(len(params), max_params)
        return tuple(params)
    raise ParameterError(
        f"params must be a mapping like {{'1': value}} or a list, not {type(params).__name__}"
    )


def check_params_limit(params: object, max_params: int) -> None:
    """Raise ParameterError when ``params`` goes beyond ``max_params``.

    For callers with a lower limit than the library's (the gateway's
    ``[gateway] max_params``): the count of a list or mapping and every key
    that is a position are checked, in time proportional to the number of
    keys given. Keys that are not positions (a key-value operation's
    ``"operation"``, ``"key"``, ...) are left to whoever reads them.
    """
    if params is None:
        return
    if type(params) is list:  # the commonest shape: no call, no abstract-class check
        if len(params) > max_params:
            _check_count(len(params), max_params)
    elif type(params) is dict or isinstance(params, Mapping):
        _check_count(len(params), max_params)
        # A key with fewer characters than max_params has digits is below it.
        short = len(str(max_params))
        for key in params:
            if type(key) is str and len(key) < short:
                continue
            if isinstance(key, str):
                digits = _digits(key)
                if digits is not None:
                    _check_position(key, _number(digits, max_params), max_params)
            elif isinstance(key, int) and not isinstance(key, bool):
                _check_position(key, key, max_params)
    elif isinstance(params, list | tuple):
        _check_count(len(params), max_params)


def _check_count(count: int, max_params: int) -> None:
    if count > max_params:
        raise ParameterError(f"{count} parameters given; at most max_params ({max_params})")


def _check_position(key: object, position: int, max_params: int) -> None:
    if position > max_params:
        raise ParameterError(
            f"parameter key {_shown(key)} is beyond max_params ({max_params}): "
            f"positions run 1..{max_params}"
        )


def _from_mapping(params: Mapping[Any, Any], max_params: int) -> tuple[Any, ...]:
    if not params:
        return ()
    _check_count(len(params), max_params)
    positions: dict[int, Any] = {}
    for key, value in params.items():
        position = _position(key, max_params)
        if position in positions:
            raise ParameterError(f"parameter {position} is given twice")
        positions[position] = value
    highest = max(positions)  # <= max_params: checked key by key
    if len(positions) != highest:
        missing = [str(i) for i in range(1, highest + 1) if i not in positions]
        shown = ", ".join(missing[:_SHOWN_MISSING])
        if len(missing) > _SHOWN_MISSING:
            shown += f", ... ({len(missing)} in all)"
        raise ParameterError(f"parameter keys must run 1..{highest} without a gap; missing {shown}")
    return tuple(positions[i] for i in range(1, highest + 1))


def _position(key: Any, max_params: int) -> int:
    if isinstance(key, bool):
        raise ParameterError(f"parameter key {key!r} is not a position (use '1', '2', ...)")
    if isinstance(key, int):
        position = key
    elif isinstance(key, str) and (digits := _digits(key)) is not None:
        position = _number(digits, max_params)
    else:
        raise ParameterError(
            f"parameter key {_shown(key)} is not a position (use '1', '2', ... or '$1', '$2', ...)"
        )
    if position < 1:
        raise ParameterError(f"parameter key {_shown(key)}: positions start at 1")
    _check_position(key, position, max_params)
    return position


def _digits(key: str) -> str | None:
    """The ASCII digits of ``"12"`` or ``"$12"``; None for anything else.

    ``str.isdigit`` alone would take ``"²"``, ``"①"`` or ``"٣"``, which
    ``int()`` refuses or reads as another number.
    """
    digits = key[1:] if key[:1] == "$" else key
    if digits.isascii() and digits.isdigit():
        return digits
    return None


def _number(digits: str, max_params: int) -> int:
    """``int(digits)``, or ``max_params + 1`` for any number above it: a
    5,000-digit key is refused without ever being converted."""
    significant = digits.lstrip("0")
    if len(significant) > len(str(max_params)):
        return max_params + 1
    return int(significant) if significant else 0


def _shown(key: object) -> str:
    """``repr(key)``, cut short: an error message never echoes a huge key."""
    if isinstance(key, str) and len(key) > 20:
        return f"{key[:20]!r}... ({len(key)} characters)"
    if isinstance(key, int) and key.bit_length() > 64:
        return f"<a number of {key.bit_length()} bits>"
    return repr(key)


# A placeholder's digits are ASCII: \d would also match other scripts' digits.
_DOLLAR = re.compile(r"\$([0-9]+)")
# Strip string literals, quoted identifiers and comments before counting, so
# '$1' inside a literal or '?' inside a comment is not taken for a placeholder.
_NOT_CODE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


def count_placeholders(query: str, style: str) -> int | None:
    """Placeholders a query expects: highest ``$n`` or number of ``?``.

    Returns None when the query cannot be analysed cheaply (dollar-quoted
    bodies), in which case the database's own check is the authority. A
    ``$n`` beyond :data:`MAX_PARAMS` is a ParameterError.
    """
    if "$$" in query:
        return None
    code = _NOT_CODE.sub(" ", query)
    if style == "dollar":
        highest = 0
        for digits in _DOLLAR.findall(code):
            position = _number(digits, MAX_PARAMS)
            if position > MAX_PARAMS:
                shown = digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"
                raise ParameterError(
                    f"placeholder ${shown} is beyond the highest position ({MAX_PARAMS})"
                )
            highest = max(highest, position)
        return highest
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
