"""Placeholders: ``?``, ``$1..$n`` or ``%s`` (one style per query) as asyncmy's ``%s``.

They are rewritten outside string literals, quoted identifiers and
comments, and every other ``%`` is a literal percent sign. Statements with
parameters run as server-side prepared statements (asyncmy's statement
cache), so values are bound by the server, not spliced into the SQL text.
:func:`classify_guarded` gives the guard (:mod:`.guard`) the text as the
server will parse it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from iogate.backends.mysql.guard import classify_mysql
from iogate.core.errors import ParameterError
from iogate.core.params import MAX_PARAMS
from iogate.core.sqlguard import Verdict

__all__ = ["bind_parameters", "classify_guarded"]

_ASCII_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class _Translated:
    sql: str  # %s placeholders, every literal % doubled for the driver
    order: tuple[int, ...]  # the argument index each %s takes, in order
    expected: int  # how many arguments the query expects


_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


@functools.lru_cache(maxsize=512)
def _translate(query: str) -> _Translated:
    """Rewrite ``?``, ``$n`` and ``%s`` to ``%s`` outside literals and comments."""
    out: list[str] = []
    order: list[int] = []
    styles: set[str] = set()
    highest_dollar = 0
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in "'\"`":
            end = _quoted_end(query, i)
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "#" or (
            query.startswith("--", i) and (i + 2 == n or query[i + 2] in " \t\r\n\f\v")
        ):
            end = query.find("\n", i)
            end = n if end == -1 else end
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif query.startswith("/*", i):
            end = query.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out.append(query[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            styles.add("?")
            order.append(len(order))
            out.append("%s")
            i += 1
        elif (
            ch == "$"
            and i + 1 < n
            and query[i + 1] in _ASCII_DIGITS
            and (i == 0 or query[i - 1] not in _IDENTIFIER_CHARS)
        ):
            j = i + 1
            while j < n and query[j] in _ASCII_DIGITS:
                j += 1
            if j - i - 1 > len(str(MAX_PARAMS)):
                raise ParameterError(
                    f"placeholder ${query[i + 1 : i + 9]}...: at most ${MAX_PARAMS}"
                )
            position = int(query[i + 1 : j])
            if position < 1:
                raise ParameterError("placeholder $0: positions start at $1")
            if position > MAX_PARAMS:
                raise ParameterError(f"placeholder ${position}: at most ${MAX_PARAMS}")
            styles.add("$n")
            highest_dollar = max(highest_dollar, position)
            order.append(position - 1)
            out.append("%s")
            i = j
        elif ch == "%":
            if query.startswith("%s", i):
                styles.add("%s")
                order.append(len(order))
                out.append("%s")
                i += 2
            else:
                out.append("%%")
                i += 1
        else:
            out.append(ch)
            i += 1
    if len(styles) > 1:
        raise ParameterError(
            f"query mixes placeholder styles {' and '.join(sorted(styles))}; use one"
        )
    expected = highest_dollar if "$n" in styles else len(order)
    return _Translated("".join(out), tuple(order), expected)


def _quoted_end(query: str, start: int) -> int:
    """Index just past the literal or identifier opened at ``start``."""
    quote = query[start]
    i, n = start + 1, len(query)
    while i < n:
        ch = query[i]
        if ch == "\\" and quote != "`":
            i += 2  # backslash escapes (the default sql_mode)
        elif ch == quote:
            if i + 1 < n and query[i + 1] == quote:
                i += 2  # doubled quote
            else:
                return i + 1
        else:
            i += 1
    return n


def bind_parameters(query: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...] | None]:
    """The SQL and arguments to hand asyncmy, or ParameterError.

    Without arguments the query is sent untouched (asyncmy only does
    %-formatting when it is given arguments).
    """
    translated = _translate(query)
    if translated.expected != len(args):
        expected = translated.expected
        raise ParameterError(
            f"query expects {expected} parameter{'s' if expected != 1 else ''}, got {len(args)}"
        )
    if not args:
        return query, None
    return translated.sql, tuple(args[index] for index in translated.order)


@functools.lru_cache(maxsize=512)
def _as_server_reads_it(query: str) -> tuple[str, tuple[int, ...]]:
    """``query`` with a ``?`` for each placeholder, and where those are.

    This is the text the server parses: asyncmy prepares it server-side
    (turning the driver's ``%s`` into ``?`` and ``%%`` into ``%``), and its
    text-protocol fallback puts one quoted literal where each ``?`` is.
    """
    out: list[str] = []
    positions: list[int] = []
    sql = _translate(query).sql
    length = i = 0
    while i < len(sql):
        j = sql.find("%", i)
        if j == -1:
            out.append(sql[i:])
            break
        out.append(sql[i:j])
        length += j - i
        if sql.startswith("%s", j):
            positions.append(length)
            out.append("?")
        else:  # "%%": every other % in the driver's text is doubled
            out.append("%")
        length += 1
        i = j + 2
    return "".join(out), tuple(positions)


def classify_guarded(query: str) -> Verdict:
    """The guard's verdict on ``query`` as MariaDB will read it."""
    text, placeholders = _as_server_reads_it(query)
    return classify_mysql(text, placeholders)
