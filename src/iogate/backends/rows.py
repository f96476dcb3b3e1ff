"""Rows read from a SQL driver as a ``Result``: the shape every SQL backend shares.

``max_rows`` is the cap the backend read to (it reads at most one row more,
to know whether there were more): a result with more rows than that is cut
to ``max_rows`` and marked ``truncated``. Column names come from the
driver's description of the result; each row is any sequence of values in
the same order (asyncpg's ``Record``, a DB-API tuple).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iogate.core.jsonable import row_to_dict
from iogate.core.result import Result

__all__ = ["rows_result"]


def rows_result(
    columns: Sequence[str],
    rows: Sequence[Any],
    max_rows: int | None,
    rows_affected: int | None,
) -> Result:
    """A successful ``query`` Result of ``rows`` (dicts keyed by ``columns``).

    Called with its four arguments in order, and building the Result as
    ``Result.ok`` does (positionally, in field order): every SQL query goes
    through here, and keyword arguments cost a slower call each.
    """
    truncated = max_rows is not None and len(rows) > max_rows
    if truncated:
        rows = rows[:max_rows]
    data = [row_to_dict(columns, row) for row in rows]
    return Result(True, data, None, None, None, "query", 0.0, 1, rows_affected, None, truncated)
