"""Pure ASGI middleware: request body limits (and the Host check, in the same pass).

Size, nesting and string length are all checked here, on the raw bytes,
before any handler or JSON parser runs, so that every route (``/database/
execute``, ``/api/execute``, ``/batch/execute``, ``/operations/{name}``, ...)
answers a body that goes beyond a limit the same way: a problem+json whose
``limit`` member names the ``[gateway]`` setting.
"""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iogate.gateway.browser import HostCheck
from iogate.gateway.responses import problem
from iogate.gateway.settings import GatewaySettings

__all__ = ["BodyLimitMiddleware", "json_limit_exceeded"]

# A JSON string token, escapes included (the unrolled form: no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
# Brackets and quotes only, both kinds of bracket as one: nesting is what is
# measured here, pairing is the parser's to check.
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


def json_limit_exceeded(body: bytes, *, max_depth: int, max_string_bytes: int) -> str | None:
    """The name of the limit a JSON body goes beyond, or None.

    ``"max_json_depth"`` when arrays and objects nest more than ``max_depth``
    levels (the body's outermost value is level 1); ``"max_string_bytes"``
    when a string, or an object key, is longer than ``max_string_bytes``
    once decoded (UTF-8). Text that is not valid JSON is left for the parser
    to refuse.

    Nothing here recurses or loops per byte in Python: every pass is one
    ``bytes`` method. A body cannot nest deeper than it has opening
    brackets, and no decoded string is longer than the raw body, so most
    bodies (a point query's ~100 bytes) are answered by two ``count`` calls
    and a length. Otherwise the body is cut down to its quotes and brackets,
    the brackets inside strings dropped, and the innermost ``[]`` pairs
    peeled off, one level per pass of ``bytes.replace``, at most
    ``max_depth + 1`` passes.
    """
    deep = body.count(b"[") + body.count(b"{") > max_depth
    if not deep and len(body) <= max_string_bytes:
        return None
    if deep:
        text = body
        if b"\\" in text:
            # Backslashes pair up left to right, as a JSON parser reads
            # them; what is left of an escape then cannot hide a quote.
            text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        # Two quotes with no bracket between them leave every bracket on
        # the same side of a string boundary: dropping them changes nothing.
        structure = text.translate(_AS_SQUARE, _NOT_STRUCTURE).replace(b'""', b"")
        pieces = structure.split(b'"')
        if len(pieces) % 2 == 0:
            return None  # an unterminated string: not JSON
        brackets = b"".join(pieces[::2])  # outside strings
        for _ in range(max_depth + 1):
            peeled = brackets.replace(b"[]", b"")
            if len(peeled) == len(brackets):
                break  # empty, or unbalanced (the parser refuses that)
            brackets = peeled
        else:
            return "max_json_depth"
    if len(body) > max_string_bytes:
        # A token's raw length bounds its decoded length: decode only long ones.
        tokens = _STRING.findall(body)
        if tokens and max(map(len, tokens)) - 2 > max_string_bytes:
            long = (t for t in tokens if len(t) - 2 > max_string_bytes)
            if any(_decoded_size(t) > max_string_bytes for t in long):
                return "max_string_bytes"
    return None


def _decoded_size(token: bytes) -> int:
    try:
        text = json.loads(token)
    except ValueError:
        return 0  # not a JSON string: the parser refuses it
    return len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0


_LIMIT_PROBLEMS = {
    "max_json_depth": ("JSON nested too deeply", "the body nests arrays and objects deeper than"),
    "max_string_bytes": ("String too long", "a string in the body is longer than"),
}


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413, chunked ones included,
    and JSON bodies beyond ``max_json_depth`` or ``max_string_bytes`` with 422.

    The body is read (up to the limit) before the app runs and replayed to
    it, so an oversized request is refused before any handler or operation
    starts, whether or not it declared a Content-Length. ``max_json_depth``
    and ``max_string_bytes`` left as None are read from the app's settings
    (``app.state.settings.gateway``) on the first request.

    ``hosts``: also apply the Host allow-list, first, in the same pass over
    the headers (one layer less per request). Only where nothing has to run
    between the two checks: with CORS, the Host check is its own layer
    outside CORS (:class:`iogate.gateway.browser.HostCheckMiddleware`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_json_depth: int | None = None,
        max_string_bytes: int | None = None,
        hosts: HostCheck | None = None,
        path_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Routes allowed a larger body than max_body_bytes (POST /batch/jobs).
        self.path_limits = path_limits or {}
        self.max_json_depth = max_json_depth
        self.max_string_bytes = max_string_bytes
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "websocket" and self.hosts is not None:
                refusal = self.hosts.refusal(scope["headers"])
                if refusal is not None:
                    await self.hosts.refuse(refusal, scope, receive, send)
                    return
            await self.app(scope, receive, send)
            return
        # One pass over the headers, in C: a point query's few headers.
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        headers = dict(raw)
        hosts = self.hosts
        # A repeated header (any: the dict holds fewer) takes the full check.
        if hosts is not None and (
            headers.get(b"host") not in hosts.accepted or len(headers) != len(raw)
        ):
            refusal = hosts.refusal(raw)
            if refusal is not None:
                await hosts.refuse(refusal, scope, receive, send)
                return
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope["path"], self.max_body_bytes)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > limit:
                await self._refuse(scope, receive, send, limit)
                return
        content_type = headers.get(b"content-type")
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, limit)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        max_depth, max_string_bytes = self.max_json_depth, self.max_string_bytes
        if max_depth is None or max_string_bytes is None:
            max_depth, max_string_bytes = self._json_limits(scope)
        # json_limit_exceeded's first test, inlined: all that a point query pays.
        maybe_over = len(body) > max_string_bytes or (
            body.count(b"[") + body.count(b"{") > max_depth
        )
        if maybe_over and (content_type is None or _is_json(content_type)):
            exceeded = json_limit_exceeded(
                body, max_depth=max_depth, max_string_bytes=max_string_bytes
            )
            if exceeded is not None:
                await self._refuse_json(exceeded, scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _json_limits(self, scope: Scope) -> tuple[int, int]:
        if self.max_json_depth is None or self.max_string_bytes is None:
            settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
            gateway = getattr(settings, "gateway", None)
            if not isinstance(gateway, GatewaySettings):
                gateway = GatewaySettings()
            if self.max_json_depth is None:
                self.max_json_depth = gateway.max_json_depth
            if self.max_string_bytes is None:
                self.max_string_bytes = gateway.max_string_bytes
        return self.max_json_depth, self.max_string_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        setting = "max_body_bytes" if limit == self.max_body_bytes else "jobs.max_body_bytes"
        response = problem(
            413,
            "Request body too large",
            f"the body exceeds {setting} ({limit} bytes)",
            headers={"Connection": "close"},
            limit=setting,
        )
        await response(scope, receive, send)

    async def _refuse_json(self, limit: str, scope: Scope, receive: Receive, send: Send) -> None:
        title, what = _LIMIT_PROBLEMS[limit]
        value = self.max_json_depth if limit == "max_json_depth" else self.max_string_bytes
        unit = "levels" if limit == "max_json_depth" else "bytes"
        response = problem(422, title, f"{what} {limit} ({value} {unit})", limit=limit)
        await response(scope, receive, send)


def _is_json(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json``: what the routes parse."""
    if content_type == b"application/json":
        return True
    media_type = content_type.partition(b";")[0].strip().lower()
    main, _, sub = media_type.partition(b"/")
    return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))
