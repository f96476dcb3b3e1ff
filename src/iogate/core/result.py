"""The one outcome type every iogate operation returns.

Operations never raise for an operation failure: they return a failed
``Result`` whose ``error_type`` is a stable code (see DESIGN §3) and whose
``error`` is a message that never contains a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from iogate.core.errors import ERROR_TYPES, ErrorType, IogateError, error_for, is_api_outcome

__all__ = ["Result"]


@dataclass(slots=True)
class Result:
    """Outcome of one operation; JSON-serialisable as is (``to_dict()``)."""

    success: bool
    data: Any = None
    error: str | None = None
    error_type: ErrorType | None = None
    resource: str | None = None
    operation: str | None = None
    duration_ms: float = 0.0
    attempts: int = 1
    rows_affected: int | None = None
    status_code: int | None = None
    truncated: bool = False
    headers: dict[str, str] | None = field(default=None, repr=False)
    retry_after: float | None = field(default=None, repr=False)
    # The id the database generated for an INSERT that returns no rows
    # (SQLite's rowid, MariaDB's AUTO_INCREMENT); None on PostgreSQL and with
    # RETURNING (docs/guide.md, "Result shape"). Last, so the positional
    # construction in ok() stays as it was.
    last_insert_id: int | None = None

    @classmethod
    def ok(
        cls,
        data: Any = None,
        *,
        resource: str | None = None,
        operation: str | None = None,
        rows_affected: int | None = None,
        status_code: int | None = None,
        truncated: bool = False,
        last_insert_id: int | None = None,
    ) -> Result:
        # Positional, in field order: every successful operation builds one,
        # and keyword arguments cost twice as much to pass.
        result = cls(
            True,
            data,
            None,
            None,
            resource,
            operation,
            0.0,
            1,
            rows_affected,
            status_code,
            truncated,
        )
        if last_insert_id is not None:
            result.last_insert_id = last_insert_id
        return result

    @classmethod
    def fail(
        cls,
        error: str,
        error_type: ErrorType,
        *,
        resource: str | None = None,
        operation: str | None = None,
        status_code: int | None = None,
        data: Any = None,
        retry_after: float | None = None,
    ) -> Result:
        return cls(
            success=False,
            data=data,
            error=error,
            error_type=error_type,
            resource=resource,
            operation=operation,
            status_code=status_code,
            retry_after=retry_after,
        )

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        resource: str | None = None,
        operation: str | None = None,
    ) -> Result:
        """A failed Result for ``exc``; iogate errors keep their error_type."""
        if isinstance(exc, IogateError):
            return cls.fail(
                str(exc) or type(exc).__name__,
                exc.error_type,
                resource=resource,
                operation=operation,
                status_code=getattr(exc, "status_code", None),
                retry_after=getattr(exc, "retry_after", None),
            )
        # Unknown exception types: report the class, not the message, which
        # may carry driver internals or secrets.
        return cls.fail(
            f"unexpected error: {type(exc).__name__}",
            "internal_error",
            resource=resource,
            operation=operation,
        )

    def raise_for_error(self, context: str | None = None) -> Result:
        """Return this Result if it succeeded; otherwise raise its iogate error.

        The class follows ``error_type`` (``query_error`` -> ``QueryError``,
        ``timeout`` -> ``OperationTimeoutError``, an upstream 401/403 ->
        ``UpstreamAuthError``, ...; see ``iogate.errors``), so one ``except``
        clause catches the same failure whether it was raised or returned::

            rows = (await db.execute_query("SELECT 1")).raise_for_error().data

        ``context`` prefixes the message (``"load user 42: ..."``).
        """
        if self.success:
            return self
        message = self.error or self.error_type or "operation failed"
        if context:
            message = f"{context}: {message}"
        raise error_for(
            self.error_type,
            message,
            status_code=self.status_code,
            retry_after=self.retry_after,
            api=is_api_outcome(self.operation, self.status_code),
        )

    def with_timing(self, duration_ms: float, attempts: int = 1) -> Result:
        return replace(self, duration_ms=round(duration_ms, 3), attempts=attempts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """The Result that :meth:`to_dict` gave ``data`` (a stored or served one).

        Unknown keys are ignored and missing ones take their defaults; an
        ``error_type`` outside :data:`iogate.errors.ERROR_TYPES` becomes
        ``"unknown"``.
        """
        error_type = data.get("error_type")
        headers = data.get("headers")
        return cls(
            success=bool(data.get("success")),
            data=data.get("data"),
            error=data.get("error"),
            error_type=(error_type if error_type in ERROR_TYPES else "unknown")
            if error_type is not None
            else None,
            resource=data.get("resource"),
            operation=data.get("operation"),
            duration_ms=float(data.get("duration_ms") or 0.0),
            attempts=int(data.get("attempts") or 1),
            rows_affected=data.get("rows_affected"),
            status_code=data.get("status_code"),
            truncated=bool(data.get("truncated")),
            headers=dict(headers) if isinstance(headers, Mapping) else None,
            last_insert_id=data.get("last_insert_id"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape served by the gateway (``headers`` only when set)."""
        out: dict[str, Any] = {
            "success": self.success,
            "data": self.data,
            "error": self.error,
            "error_type": self.error_type,
            "resource": self.resource,
            "operation": self.operation,
            "duration_ms": self.duration_ms,
            "attempts": self.attempts,
            "rows_affected": self.rows_affected,
            "last_insert_id": self.last_insert_id,
            "status_code": self.status_code,
            "truncated": self.truncated,
        }
        if self.headers is not None:
            out["headers"] = self.headers
        return out
