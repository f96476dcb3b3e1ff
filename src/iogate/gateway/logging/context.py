"""The request id of the HTTP request being served, in a contextvar."""

from __future__ import annotations

import contextvars
import logging
import re
import uuid

__all__ = ["REQUEST_ID_HEADER", "RequestIdFilter", "current_request_id", "request_id_var"]

REQUEST_ID_HEADER = "x-request-id"

# A caller's id is reused only when it cannot smuggle anything into a log
# line or a header: short, and from a conservative alphabet.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "iogate_request_id", default=None
)


def current_request_id() -> str | None:
    """The id of the HTTP request being served in this context, if any."""
    return request_id_var.get()


def _new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id (None outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True
