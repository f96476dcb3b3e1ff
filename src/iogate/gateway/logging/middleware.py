"""``RequestIdMiddleware``: one request id per HTTP request, and the access log line."""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iogate.gateway.logging.context import (
    _SANE_REQUEST_ID,
    REQUEST_ID_HEADER,
    _new_request_id,
    request_id_var,
)
from iogate.gateway.logging.handler import log_line

__all__ = ["RequestIdMiddleware"]

access_logger = logging.getLogger("iogate.access")


class RequestIdMiddleware:
    """One request id per HTTP request: contextvar, response header, access log.

    Add it last (outermost) so that responses produced by other middleware,
    such as a 413 from the body limit, carry the header too. Wrapping twice
    is harmless: an inner instance sees the id the outer one chose.
    """

    def __init__(self, app: ASGIApp, *, header: str = REQUEST_ID_HEADER) -> None:
        self.app = app
        self.header = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        existing = scope.get("iogate.request_id")
        if existing is not None:
            await self.app(scope, receive, send)
            return
        request_id = self._incoming(scope) or _new_request_id()
        scope["iogate.request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding
        header_value = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != self.header]
                headers.append((self.header, header_value))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_ms = round((time.perf_counter() - started) * 1000, 3)
            # The path only: a query string may carry a token.
            path = scope.get("path", "")
            if access_logger.isEnabledFor(logging.INFO):
                method = scope.get("method", "")
                log_line(
                    access_logger,
                    logging.INFO,
                    '"%s %s" %s in %.1f ms',
                    (method, path, status, duration_ms),
                    {"method": method, "path": path, "status": status, "duration_ms": duration_ms},
                    request_id,
                )
            request_id_var.reset(token)

    def _incoming(self, scope: Scope) -> str | None:
        for name, value in scope.get("headers", []):
            if name == self.header:
                candidate = value.decode("latin-1")
                return candidate if _SANE_REQUEST_ID.fullmatch(candidate) else None
        return None
