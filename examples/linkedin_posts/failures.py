"""A failed ``Result`` turned into the exception seed 002's functions raise.

iogate operations return a ``Result`` and never raise for a failure. The
seed's dedicated functions return plain values (an id, a row, ``True``) and
raise ``APIError``/``QueryError``...; ``Result.raise_for_error()`` bridges the
styles, so each dedicated function stays one query or one call plus one check.
"""

from __future__ import annotations

from iogate import Result

__all__ = ["raise_for_api", "raise_for_database"]


def raise_for_database(result: Result, action: str) -> Result:
    """Return ``result`` if it succeeded, else raise the matching iogate error."""
    return result.raise_for_error(action)


def raise_for_api(result: Result, action: str) -> Result:
    """Return ``result`` if it succeeded, else raise the matching iogate error.

    401/403 become ``AuthenticationError``, 429 ``RateLimitError`` (seed
    names), other non-2xx ``HTTPStatusError``; timeouts and an open breaker
    keep their own classes, so ``resilient_api_operation`` retries the
    former and nothing retries the latter. ``Result.raise_for_error`` does
    the mapping; this name stays for the seed's call sites.
    """
    return result.raise_for_error(action)
