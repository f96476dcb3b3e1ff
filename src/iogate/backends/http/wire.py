"""One attempt on the wire: send a request, follow same-origin redirects, read the reply.

aiohttp is met here and only here on the request path: its exceptions are
mapped to failed Results at this edge (most specific first), and every
message is written from the method and path, never from a driver's
exception text (which may quote a URL with a key in its query). A failed
TLS handshake is a ``connection_error`` naming the host and OpenSSL's
reason, and marks the call as not worth another attempt.

Redirects are followed by hand, at most ``MAX_REDIRECTS``, and only on the
base URL's origin. A reply is a Result: 2xx a success with the parsed JSON
body (text when it is not JSON), anything else a failed ``http_error``
(``rate_limited`` for 429) with the size-capped upstream body as ``data``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import aiohttp
from yarl import URL

from iogate.backends.http.body import (
    DEFAULT_ERROR_BODY_BYTES,
    TooDeepError,
    decode_body,
    read_capped,
)
from iogate.backends.http.response import UNREAD, ResponseResult, copy_headers
from iogate.backends.http.tls import handshake_failure
from iogate.backends.urls import BaseURL
from iogate.core.deadline import Clock, Deadline
from iogate.core.errors import ErrorType
from iogate.core.redact import SecretMask
from iogate.core.result import Result
from iogate.resilience.retry import parse_retry_after

__all__ = ["MAX_REDIRECTS", "Call", "Wire", "display_path"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Call(Deadline):
    """What the retry decision needs to know about one request.

    A Call is also the request's own ``Deadline`` when its caller gave none
    (the manager sets ``expires_at``): one object per call instead of two,
    about 2,700 instructions less (docs/benchmarks.md, "The API path taken
    apart"). Until then it has no expiry, like ``Deadline(None)``.
    """

    __slots__ = ("attempts", "idempotent", "method", "not_sent", "permanent")

    def __init__(self, method: str, idempotent: bool, clock: Clock = time.monotonic) -> None:
        # Deadline's fields, set here rather than through its __init__: one frame less.
        self._clock = clock
        self.expires_at = None
        self.method = method
        self.idempotent = idempotent
        self.attempts = 0
        # True while every attempt so far provably never reached the upstream
        # (connection refused, no connection within the timeout).
        self.not_sent = False
        # True after a failure that another attempt would repeat (a TLS handshake).
        self.permanent = False

    def __repr__(self) -> str:
        return (
            f"Call({self.method}, idempotent={self.idempotent}, attempts={self.attempts}, "
            f"{super().__repr__()})"
        )


class Wire:
    """How one API's attempts go on the wire (fixed when its manager is built)."""

    __slots__ = ("base", "full_timeout", "full_total", "max_json_depth", "max_response_bytes")

    def __init__(
        self, base: BaseURL, *, timeout: float, max_response_bytes: int, max_json_depth: int
    ) -> None:
        self.base = base
        self.max_response_bytes = max_response_bytes
        self.max_json_depth = max_json_depth
        # Most attempts run under the manager's own fresh deadline, so one
        # timeout object serves them; it is shorter than ``timeout`` by at
        # most a millisecond, so it never outlives the deadline.
        self.full_total = timeout - min(0.001, timeout / 100)
        self.full_timeout = aiohttp.ClientTimeout(total=self.full_total)

    async def send(
        self,
        session: aiohttp.ClientSession,
        call: Call,
        url: str,
        query: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str] | None,
        remaining: float | None,
        mask: SecretMask,
    ) -> Result:
        """One attempt; records in ``call`` whether it provably never left."""
        method = call.method
        target: str | URL = url
        client_timeout = self.full_timeout
        if remaining is None or not 0.0 <= remaining - self.full_total <= 0.002:
            # The shared one fits when it is never longer than ``remaining``
            # and at most 2 ms shorter; otherwise one for this attempt.
            client_timeout = aiohttp.ClientTimeout(total=remaining)
        not_sent = False
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.request(
                    method,
                    target,
                    params=query,
                    data=body,
                    headers=headers,
                    timeout=client_timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if status in _REDIRECTS and "Location" in response.headers:
                        next_url = _redirect_target(response)
                        refusal = self._refused_redirect(next_url)
                        if refusal is not None:
                            return Result.fail(
                                f"{method} {display_path(url)}: {refusal}",
                                "http_error",
                                status_code=status,
                            )
                        assert next_url is not None
                        target, query = next_url, None
                        if status == 303 or (status in {301, 302} and method == "POST"):
                            method, body = "GET", None
                        continue
                    # Read here rather than in a helper coroutine: one frame
                    # less per call on the hot path.
                    cap = (
                        self.max_response_bytes if 200 <= status < 300 else DEFAULT_ERROR_BODY_BYTES
                    )
                    # Past the cap by the longest encoded secret: one that
                    # starts before the cut is read whole, so it is masked
                    # whole before the cut.
                    limit = cap + mask.window
                    length = response.content_length
                    if length is not None and length <= limit:
                        raw = await response.read()
                        truncated = len(raw) > cap
                    else:
                        raw, over = await read_capped(response, limit)
                        truncated = over or len(raw) > cap
                    return self._result(response, method, url, raw, cap, truncated, mask)
            return Result.fail(
                f"{method} {display_path(url)}: more than {MAX_REDIRECTS} redirects", "http_error"
            )
        except aiohttp.ClientSSLError as exc:
            # No request left (the handshake failed) and none should follow.
            call.permanent = not_sent = True
            return Result.fail(
                f"{method} {display_path(url)}: {handshake_failure(exc)} for {self.base.host}",
                "connection_error",
            )
        except aiohttp.ClientConnectorError:
            # The TCP connection was never established: nothing sent.
            not_sent = True
            return Result.fail(
                f"{method} {display_path(url)}: cannot connect to {self.base.origin}",
                "connection_error",
            )
        except aiohttp.ConnectionTimeoutError:
            not_sent = True
            return Result.fail(
                f"{method} {display_path(url)}: "
                f"no connection to {self.base.origin} within the timeout",
                "timeout",
            )
        except (aiohttp.ServerTimeoutError, TimeoutError):
            return Result.fail(
                f"{method} {display_path(url)}: no answer within the timeout", "timeout"
            )
        except aiohttp.InvalidURL:
            not_sent = True
            return Result.fail(f"{method} {display_path(url)}: invalid URL", "invalid_request")
        except aiohttp.ClientError as exc:
            # Disconnected, reset or a broken body: the request may have been
            # processed, so this is not "never sent".
            return Result.fail(
                f"{method} {display_path(url)}: connection failed ({type(exc).__name__})",
                "connection_error",
            )
        finally:
            call.not_sent = not_sent and (call.attempts == 1 or call.not_sent)

    def _refused_redirect(self, next_url: URL | None) -> str | None:
        if next_url is None:
            return "redirect with an invalid Location refused"
        if not self.base.same_origin(str(next_url)):
            return "redirect to another origin refused"
        return None

    def _result(
        self,
        response: aiohttp.ClientResponse,
        method: str,
        url: str,
        raw: bytes,
        cap: int,
        truncated: bool,
        mask: SecretMask,
    ) -> Result:
        status = response.status
        response_headers = response.headers
        try:
            data: Any = decode_body(
                raw,
                response_headers.get("Content-Type", ""),
                mask,
                cap,
                truncated,
                self.max_json_depth,
            )
        except TooDeepError:
            return Result.fail(
                f"{method} {display_path(url)}: upstream JSON nested deeper than "
                f"{self.max_json_depth} levels",
                "http_error",
                status_code=status,
            )
        if 200 <= status < 300:
            # Result.ok(data, status_code=status, truncated=truncated), built
            # directly (positional, in field order, as ok() does itself): one
            # frame less per call. Its headers are copied when first read.
            reply = ResponseResult(
                True, data, None, None, None, None, 0.0, 1, None, status, truncated, UNREAD
            )
            reply._source = response_headers
            reply._mask = mask
            return reply
        retry_after = (
            parse_retry_after(response_headers.get("Retry-After")) if status in {429, 503} else None
        )
        error_type: ErrorType = "rate_limited" if status == 429 else "http_error"
        result = Result.fail(
            f"{method} {display_path(url)}: upstream answered {status}",
            error_type,
            status_code=status,
            data=data,
            retry_after=retry_after,
        )
        result.truncated = truncated
        result.headers = copy_headers(response_headers, mask)
        return result


def _redirect_target(response: aiohttp.ClientResponse) -> URL | None:
    """The absolute URL a redirect names, or None when its Location is no URL."""
    try:
        return response.url.join(URL(response.headers["Location"]))
    except ValueError:  # a bad port, bracketed host or IDNA label (UnicodeError)
        return None


@functools.lru_cache(maxsize=256)
def display_path(url: str) -> str:
    """The path of ``url`` for a message: a query string may carry an API key."""
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3)
    path = url[path_start:] if path_start >= 0 else "/"
    return path.partition("?")[0][:200]
