"""External HTTP APIs on aiohttp: one pooled session per API.

``AsyncAPIManager`` turns every call into a ``Result``: 2xx is a success with
the parsed JSON body (text when it is not JSON), ``status_code`` and the
response headers; anything else is a failed Result whose ``error_type`` is
``http_error`` (with the size-capped upstream body as ``data``),
``rate_limited``, ``timeout``, ``connection_error``, ``circuit_open`` or
``invalid_request``.

TLS: certificates are verified by default against the system CA store;
``ca_bundle`` (a PEM file) replaces that store, ``verify_ssl=False`` turns
verification off. The ``ssl.SSLContext`` is built once, when the manager is
created, so a missing bundle is a ``ConfigError`` at start-up, not a failure
per request. A failed handshake (certificate not trusted, wrong host name,
not TLS at all) is a ``connection_error`` naming the host and OpenSSL's
reason, and is never retried: the next attempt would fail the same way.

Around each request, in this order: the endpoint is joined to the base URL
(``iogate.backends.urls`` refuses anything that could leave it), one deadline
is set (the smaller of ``timeout`` and the caller's), then attempts run under
``iogate.resilience.retry``; each attempt passes the circuit breaker and the
rate limiter before it touches the network. Redirects are followed by hand,
and only on the base URL's origin.

A call made under a caller's ``Deadline`` (every gateway request has one)
tells the upstream, on every attempt, how long it has left: in
``Request-Timeout`` (seconds) by default, or in the forms the caller's
``ClientDeadline`` came in (``grpc-timeout`` for a gRPC client of the
gateway), so a chain of services shrinks one deadline instead of starting a
fresh timeout at each hop (``deadline_header=None`` sends nothing). Retries are bounded three ways:
the policy's attempts, the deadline (a wait, ``Retry-After`` included, that
would not end before it means no retry: the upstream's answer is returned at
once), and the manager's ``RetryBudget`` (attempts stay within 1.2x the
requests against an upstream that fails everything). aiohttp's own silent
repeat of an idempotent request on a dropped connection is switched off, so
that every attempt is one the budget counted.

aiohttp is imported only here; its exceptions are mapped to Results at this
edge. Configured header values never appear in a Result, an error message or
the stats: messages are written here from the method and path, never from a
driver's exception text, and what an upstream sends back is masked with
``iogate.core.redact.SecretMask``: every configured header value whatever the
header's name (content-negotiation headers such as ``Accept`` excepted), the
credential after an auth scheme and a Basic password, in response headers,
text bodies and every string of a JSON body, escaped forms included. A body
is masked before it is cut to its size cap, so no prefix of a value survives
the cut.

What an upstream sends is input like any other: JSON nested deeper than
``max_json_depth`` levels, or a redirect whose ``Location`` is not a URL, is
a failed ``http_error`` Result (HTTP 502 at the gateway), never an exception.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import random as _random
import re
import ssl
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar

import aiohttp
import orjson
from yarl import URL

from iogate.backends.base import ManagerState
from iogate.backends.urls import BaseURL, join_endpoint
from iogate.core import events
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    APIConnectionError,
    CircuitOpenError,
    ClosedError,
    ConfigError,
    ErrorType,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
    RateLimitedError,
    tls_reason,
)
from iogate.core.events import OperationEvent
from iogate.core.redact import SecretMask
from iogate.core.result import Result
from iogate.core.stats import OperationStats
from iogate.resilience.breaker import CircuitBreaker, CircuitBreakerConfig
from iogate.resilience.budget import RetryBudget
from iogate.resilience.deadline_headers import (
    DEADLINE_HEADERS,
    REQUEST_TIMEOUT,
    ClientDeadline,
    format_timeout,
)
from iogate.resilience.ratelimit import RateLimiter
from iogate.resilience.retry import (
    Random,
    RetryPolicy,
    Sleep,
    parse_retry_after,
    retry_results,
)

__all__ = [
    "DEFAULT_ERROR_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_JSON_DEPTH",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "AsyncAPIManager",
    "ExternalAPISession",
]

DEFAULT_MAX_CONNECTIONS = 30
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_ERROR_BODY_BYTES = 4096
# Below orjson's own limit (254 levels when encoding), with room left for the
# gateway's envelopes around ``data`` (Result, batch, job).
DEFAULT_MAX_JSON_DEPTH = 200
_ORJSON_MAX_DEPTH = 254
DEFAULT_DNS_CACHE_TTL = 300
MAX_REDIRECTS = 5
_URL_CACHE_SIZE = 256

_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Headers a caller may not set: they would let a request choose another
# virtual host or desynchronise the connection (request smuggling).
_FORBIDDEN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_SENSITIVE_HEADER = re.compile(r"(?i)auth|token|key|secret|cookie|passw|signature|session")
# Configured headers whose values are protocol vocabulary ("application/json",
# "gzip"), never a credential: masking them would corrupt ordinary replies.
_VOCABULARY_HEADERS = frozenset(
    {
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-language",
        "content-type",
        "pragma",
    }
)
_HEADER_VALUE_OK = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
_HEADER_NAME_OK = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_IDEMPOTENCY_KEY = "idempotency-key"


@dataclass(slots=True)
class _Call:
    """What the retry decision needs to know about one request."""

    method: str
    idempotent: bool
    attempts: int = 0
    # True while every attempt so far provably never reached the upstream
    # (connection refused, no connection within the timeout).
    not_sent: bool = False
    # True after a failure that another attempt would repeat (a TLS handshake).
    permanent: bool = False


class AsyncAPIManager:
    """One external API: pooled session, retries, breaker, rate limit (seed 000).

    ``retry``, ``circuit_breaker`` accept their config object, a dict from a
    config file, or ``False`` to turn them off; ``rate_limit`` is a string
    such as ``"100/second"`` (``rate_limit_storage`` an async ``limits``
    storage URI to share it between processes). ``verify_ssl`` and
    ``ca_bundle`` configure HTTPS certificate checks (see module doc).
    ``max_json_depth`` (at most ``DEFAULT_MAX_JSON_DEPTH``) bounds the
    nesting of a JSON reply; deeper is a failed ``http_error`` Result.
    ``deadline_header`` (``"Request-Timeout"`` or ``"grpc-timeout"``, None
    for none) carries the time left of a caller's deadline to the upstream.
    """

    backend: ClassVar[str] = "http"

    def __init__(
        self,
        base_url: str,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        timeout: float = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | bool | int | None = None,
        circuit_breaker: CircuitBreakerConfig | Mapping[str, Any] | bool | None = None,
        rate_limit: str | None = None,
        *,
        name: str | None = None,
        rate_limit_storage: str | None = None,
        retry_budget: RetryBudget | bool = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
        deadline_header: str | None = REQUEST_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Random = _random.random,
    ) -> None:
        self.base = BaseURL.parse(base_url)
        self.name = name or self.base.host
        if max_connections < 1:
            raise ConfigError(f"max_connections must be at least 1, got {max_connections}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive, got {timeout}")
        self.max_connections = max_connections
        self.timeout = float(timeout)
        self.max_response_bytes = max_response_bytes
        if not 1 <= max_json_depth <= DEFAULT_MAX_JSON_DEPTH:
            raise ConfigError(
                f"max_json_depth must be between 1 and {DEFAULT_MAX_JSON_DEPTH}, "
                f"got {max_json_depth}"
            )
        self.max_json_depth = max_json_depth
        if deadline_header is not None and deadline_header.lower() not in DEADLINE_HEADERS:
            raise ConfigError(
                f"deadline_header must be one of {', '.join(DEADLINE_HEADERS.values())} "
                f"or None, got {deadline_header!r}"
            )
        self.deadline_header = (
            None if deadline_header is None else DEADLINE_HEADERS[deadline_header.lower()]
        )
        self.verify_ssl = verify_ssl
        self.ca_bundle = ca_bundle
        self._ssl = _client_ssl_context(verify_ssl=verify_ssl, ca_bundle=ca_bundle)
        self._headers = _checked_headers(headers or {}, configured=True)
        self._mask = SecretMask(_configured_secrets(self._headers))
        self.retry_policy = RetryPolicy.coerce(retry)
        breaker_config = CircuitBreakerConfig.coerce(circuit_breaker)
        self.breaker = (
            None
            if breaker_config is None
            else CircuitBreaker(breaker_config, name=self.name, clock=clock)
        )
        self.rate_limiter = (
            None
            if rate_limit is None
            else RateLimiter(rate_limit, name=self.name, storage_uri=rate_limit_storage)
        )
        if retry_budget is True:
            self.retry_budget: RetryBudget | None = RetryBudget(clock=clock)
        elif retry_budget is False:
            self.retry_budget = None
        else:
            self.retry_budget = retry_budget
        self._retry_stop_checks = self._stop_checks()
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self.state = ManagerState.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._open_lock = asyncio.Lock()
        self._stats = OperationStats()
        # Endpoints already checked and joined: the same few recur on a hot path.
        self._urls: dict[str, str] = {}
        # Most attempts run under the manager's own fresh deadline, so one
        # timeout object serves them; it is shorter than ``timeout`` by at
        # most a millisecond, so it never outlives the deadline.
        self._full_timeout = aiohttp.ClientTimeout(
            total=self.timeout - min(0.001, self.timeout / 100)
        )

    def __repr__(self) -> str:
        return f"<AsyncAPIManager {self.name!r} {self.base} state={self.state.value}>"

    # -- lifecycle ----------------------------------------------------------

    async def initialize_session(self) -> None:
        """Open the pooled session; idempotent. A closed manager cannot reopen."""
        if self.state is ManagerState.OPEN:
            return
        if self.state is ManagerState.CLOSED:
            raise ClosedError(f"{self.name}: manager is closed and cannot be reopened")
        async with self._open_lock:
            if self.state is ManagerState.UNOPENED:
                connector = aiohttp.TCPConnector(
                    limit=self.max_connections,
                    limit_per_host=self.max_connections,
                    ttl_dns_cache=DEFAULT_DNS_CACHE_TTL,
                    ssl=self._ssl,
                )
                self._session = aiohttp.ClientSession(
                    connector=connector,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=None),
                    # Proxies from the environment would send our requests
                    # (and credentials) somewhere the config does not name.
                    trust_env=False,
                    raise_for_status=False,
                )
                # aiohttp silently repeats a GET/PUT/DELETE once when its
                # connection drops (RFC 9112 §9.3.1): an attempt that neither
                # the retry policy nor the retry budget would see. A test pins
                # this private switch (aiohttp's own test client sets it too).
                self._session._retry_connection = False
                self.state = ManagerState.OPEN

    async def close(self) -> None:
        """Close the session and its connections; idempotent."""
        if self.state is ManagerState.CLOSED:
            return
        self.state = ManagerState.CLOSED
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()

    aclose = close

    async def __aenter__(self) -> AsyncAPIManager:
        await self.initialize_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        if getattr(self, "state", None) is ManagerState.OPEN:
            warnings.warn(
                f"AsyncAPIManager {self.name!r} was never closed",
                ResourceWarning,
                stacklevel=1,
            )

    # -- operations ---------------------------------------------------------

    async def get(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("GET", endpoint, data=data, params=params, headers=headers)

    async def post(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("POST", endpoint, data=data, params=params, headers=headers)

    async def put(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("PUT", endpoint, data=data, params=params, headers=headers)

    async def patch(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("PATCH", endpoint, data=data, params=params, headers=headers)

    async def delete(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("DELETE", endpoint, data=data, params=params, headers=headers)

    async def request(
        self,
        method: str,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        deadline: Deadline | None = None,
    ) -> Result:
        """One call to the API; never raises for a failure (see module doc)."""
        started = time.perf_counter()
        verb = method.upper() if isinstance(method, str) else "?"
        call = _Call(method=verb, idempotent=False)
        tracer = events.tracer
        if tracer is not None:  # the upstream continues the trace (W3C traceparent)
            span = tracer.start("api", self, verb, endpoint)
            headers = tracer.inject(headers)
        try:
            result = await self._request(call, endpoint, data, params, headers, deadline)
        except IogateError as exc:
            result = Result.from_exception(exc)
        except BaseException as exc:
            if tracer is not None:
                tracer.finish(span, None, exc)
            raise
        result.resource = self.name
        result.operation = verb
        duration = time.perf_counter() - started
        # Whole microseconds, as round(ms, 3) would give, at a fifth of its cost.
        result.duration_ms = duration_ms = round(duration * 1_000_000) / 1000
        result.attempts = attempts = call.attempts or 1
        error_type = result.error_type
        self._stats.record(duration_ms, error_type)
        if events.hooks:  # no event is built when nobody listens
            events.emit(
                OperationEvent(
                    self.name,
                    "api",
                    self.backend,
                    verb if verb in _METHODS else "invalid",  # labels from a closed set
                    duration,
                    error_type,
                    attempts,
                )
            )
        if tracer is not None:
            tracer.finish(span, result)
        return result

    async def _request(
        self,
        call: _Call,
        endpoint: str,
        data: Any,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        deadline: Deadline | None,
    ) -> Result:
        if call.method not in _METHODS:
            raise InvalidRequestError(
                f"method must be one of {', '.join(sorted(_METHODS))}, got {call.method[:16]!r}"
            )
        url = self._urls.get(endpoint) if type(endpoint) is str else None
        if url is None:
            url = join_endpoint(self.base, endpoint)  # checks it; raises if unsafe
            if len(self._urls) < _URL_CACHE_SIZE:
                self._urls[endpoint] = url
        extra_headers = _checked_headers(headers, configured=False) if headers else None
        deadline_forms = self._deadline_forms(deadline)
        if extra_headers and deadline_forms:
            # The time left is ours to tell: a caller's own deadline header
            # is replaced (a larger value would promise the upstream time
            # that does not exist), in the form the caller chose.
            for name in [n for n in extra_headers if n.lower() in DEADLINE_HEADERS]:
                del extra_headers[name]
                form = DEADLINE_HEADERS[name.lower()]
                if form not in deadline_forms:
                    deadline_forms = (*deadline_forms, form)
        query = _query_params(params)
        body, content_type = _encode_body(data)
        if content_type is not None:
            extra_headers = {**(extra_headers or {}), "Content-Type": content_type}
        mask = self._mask
        if extra_headers:
            extra_secrets = _request_secrets(extra_headers)
            if extra_secrets:
                mask = _mask_of(mask.secrets + extra_secrets)
        call.idempotent = call.method in _IDEMPOTENT_METHODS or _has_idempotency_key(
            self._headers, extra_headers
        )
        if self.state is not ManagerState.OPEN:
            await self.initialize_session()
        session = self._session
        assert session is not None
        # One deadline bounds every attempt and every wait between them.
        effective = Deadline(self.timeout, clock=self._clock)
        if deadline is not None:
            remaining = deadline.remaining()
            if remaining is not None and remaining < self.timeout:
                effective = deadline
        if effective.expired():
            raise OperationTimeoutError("deadline passed before the request started")

        # A partial, not a closure: one coroutine frame less on the hot path.
        attempt = functools.partial(
            self._attempt,
            session,
            call,
            url,
            query,
            body,
            extra_headers,
            effective,
            mask,
            deadline_forms,
        )
        return await retry_results(
            attempt,
            policy=self.retry_policy,
            should_retry=lambda result: self._should_retry(call, result),
            deadline=effective,
            stop_checks=self._retry_stop_checks,
            sleep=self._sleep,
            random=self._random,
        )

    def _deadline_forms(self, deadline: Deadline | None) -> tuple[str, ...]:
        """Headers that tell the upstream how long it has: the client's forms, or ours.

        Only for a call made under a caller's deadline (every gateway request
        has one): a call bounded by nothing but the manager's own timeout
        sends none, and pays nothing for it.
        """
        if self.deadline_header is None or deadline is None or deadline.expires_at is None:
            return ()
        if isinstance(deadline, ClientDeadline):
            return deadline.headers
        return (self.deadline_header,)

    def _stop_checks(self) -> list[Any]:
        checks: list[Any] = []
        breaker = self.breaker
        if breaker is not None:
            checks.append(lambda: not breaker.allows())
        budget = self.retry_budget
        if budget is not None:
            # Last on purpose: it takes a token, so it runs only for a retry
            # that every other check has already allowed.
            checks.append(lambda: not budget.try_withdraw())
        return checks

    def _should_retry(self, call: _Call, result: Result) -> bool:
        if result.success or call.permanent:
            return False
        transient = result.error_type in {"timeout", "connection_error"} or (
            result.status_code is not None
            and result.status_code in self.retry_policy.retry_statuses
        )
        # A POST/PATCH that may have reached the upstream could be applied
        # twice; retry it only with an Idempotency-Key or proof it never left.
        return transient and (call.idempotent or call.not_sent)

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        call: _Call,
        url: str,
        query: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str] | None,
        deadline: Deadline,
        mask: SecretMask,
        deadline_forms: tuple[str, ...],
    ) -> Result:
        call.attempts += 1
        ticket: int | None = None
        breaker = self.breaker
        try:
            if breaker is not None:
                ticket = breaker.acquire()
            if self.rate_limiter is not None:
                await self.rate_limiter.acquire()
        except (CircuitOpenError, RateLimitedError) as exc:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            call.not_sent = call.attempts == 1 or call.not_sent
            self._deposit(call)
            return Result.from_exception(exc)
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            self._deposit(call)
            return Result.fail(f"{call.method}: deadline passed", "timeout")
        if deadline_forms and remaining is not None:
            # What is left now, after earlier attempts and waits: each hop of
            # a chain of services works to the same end point.
            headers = dict(headers) if headers else {}
            for name in deadline_forms:
                headers[name] = format_timeout(name, remaining)
        try:
            result, not_sent = await self._send(
                session, call, url, query, body, headers, remaining, mask
            )
        except BaseException:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            raise
        call.not_sent = not_sent and (call.attempts == 1 or call.not_sent)
        if breaker is not None and ticket is not None:
            if _upstream_failed(result):
                breaker.record_failure(ticket)
            else:
                breaker.record_success(ticket)
        self._deposit(call)
        return result

    def _deposit(self, call: _Call) -> None:
        """A request's share of the retry budget, paid when its first attempt ends.

        Paid then, not when the request starts, so that a request's own
        deposit is in before it asks for a retry. Deposits of requests still
        in flight would otherwise pile up past one token, and what piles up is
        kept as reserve, which is only lent: a burst of concurrent failures
        would then get well under the ratio.
        """
        if call.attempts == 1 and self.retry_budget is not None:
            self.retry_budget.deposit()

    async def _send(
        self,
        session: aiohttp.ClientSession,
        call: _Call,
        url: str,
        query: list[tuple[str, str]] | None,
        body: bytes | None,
        headers: dict[str, str] | None,
        timeout: float | None,
        mask: SecretMask,
    ) -> tuple[Result, bool]:
        """One attempt on the wire; returns (Result, provably-not-sent)."""
        method = call.method
        target: str | URL = url
        full = self._full_timeout
        if timeout is not None and full.total is not None and 0.0 <= timeout - full.total <= 0.002:
            client_timeout = full  # never longer than ``timeout``, at most 2 ms shorter
        else:
            client_timeout = aiohttp.ClientTimeout(total=timeout)
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
                        if next_url is None:
                            return Result.fail(
                                f"{method} {_display_path(url)}: "
                                "redirect with an invalid Location refused",
                                "http_error",
                                status_code=status,
                            ), False
                        if not self.base.same_origin(str(next_url)):
                            return Result.fail(
                                f"{method} {_display_path(url)}: "
                                "redirect to another origin refused",
                                "http_error",
                                status_code=status,
                            ), False
                        target, query = next_url, None
                        if status == 303 or (status in {301, 302} and method == "POST"):
                            method, body = "GET", None
                        continue
                    return await self._read_response(response, method, url, mask), False
            return Result.fail(
                f"{method} {_display_path(url)}: more than {MAX_REDIRECTS} redirects", "http_error"
            ), False
        except aiohttp.ClientSSLError as exc:
            # No request left (the handshake failed) and none should follow.
            call.permanent = True
            return Result.fail(
                f"{method} {_display_path(url)}: {_tls_reason(exc)} for {self.base.host}",
                "connection_error",
            ), True
        except aiohttp.ClientConnectorError:
            # The TCP connection was never established: nothing sent.
            return Result.fail(
                f"{method} {_display_path(url)}: cannot connect to {self.base.origin}",
                "connection_error",
            ), True
        except aiohttp.ConnectionTimeoutError:
            return Result.fail(
                f"{method} {_display_path(url)}: "
                f"no connection to {self.base.origin} within the timeout",
                "timeout",
            ), True
        except (aiohttp.ServerTimeoutError, TimeoutError):
            return Result.fail(
                f"{method} {_display_path(url)}: no answer within the timeout", "timeout"
            ), False
        except aiohttp.InvalidURL:
            return Result.fail(
                f"{method} {_display_path(url)}: invalid URL", "invalid_request"
            ), True
        except aiohttp.ClientError as exc:
            # Disconnected, reset or a broken body: the request may have been
            # processed, so this is not "never sent".
            return Result.fail(
                f"{method} {_display_path(url)}: connection failed ({type(exc).__name__})",
                "connection_error",
            ), False

    async def _read_response(
        self,
        response: aiohttp.ClientResponse,
        method: str,
        url: str,
        mask: SecretMask,
    ) -> Result:
        status = response.status
        ok = 200 <= status < 300
        cap = self.max_response_bytes if ok else DEFAULT_ERROR_BODY_BYTES
        # Past the cap by the longest encoded secret: one that starts before
        # the cut is read whole, so it is masked whole before the cut.
        limit = cap + mask.window
        length = response.content_length
        if length is not None and length <= limit:
            raw = await response.read()
            truncated = len(raw) > cap
        else:
            raw, over = await _read_capped(response, limit)
            truncated = over or len(raw) > cap
        content_type = response.headers.get("Content-Type", "")
        try:
            data = _decode_body(raw, content_type, mask, cap, truncated, self.max_json_depth)
        except _TooDeepError:
            return Result.fail(
                f"{method} {_display_path(url)}: upstream JSON nested deeper than "
                f"{self.max_json_depth} levels",
                "http_error",
                status_code=status,
            )
        # Response headers too: an upstream may echo our credentials there.
        # Names as plain str: aiohttp's are istr, which orjson refuses as keys.
        if mask:
            headers = {str(k): mask(v) for k, v in response.headers.items()}
        else:
            headers = {str(k): v for k, v in response.headers.items()}
        if ok:
            result = Result.ok(data, status_code=status, truncated=truncated)
            result.headers = headers
            return result
        retry_after = (
            parse_retry_after(response.headers.get("Retry-After")) if status in {429, 503} else None
        )
        error_type: ErrorType = "rate_limited" if status == 429 else "http_error"
        result = Result.fail(
            f"{method} {_display_path(url)}: upstream answered {status}",
            error_type,
            status_code=status,
            data=data,
            retry_after=retry_after,
        )
        result.truncated = truncated
        result.headers = headers
        return result

    # -- health and observability ------------------------------------------------

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the breaker is not open and the upstream accepts TCP."""
        if self.state is ManagerState.CLOSED:
            raise ClosedError(f"{self.name}: manager is closed")
        if self.breaker is not None and self.breaker.state.value == "open":
            raise CircuitOpenError(
                f"{self.name}: circuit is open", retry_after=self.breaker.retry_after()
            )
        # For https the handshake is part of the check: an untrusted
        # certificate makes every request fail, so it makes /ready fail too.
        tls = self._ssl if self.base.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(self.base.host, self.base.port, ssl=tls)
        except TimeoutError:
            raise OperationTimeoutError(
                f"{self.name}: {self.base.origin} did not accept a connection within {timeout}s"
            ) from None
        except ssl.SSLError as exc:
            raise APIConnectionError(
                f"{self.name}: {_tls_reason(exc)} for {self.base.host}"
            ) from exc
        except OSError as exc:
            raise APIConnectionError(f"{self.name}: cannot connect to {self.base.origin}") from exc
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    def breaker_state(self) -> str:
        return "disabled" if self.breaker is None else self.breaker.state.value

    def get_stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.backend,
            "state": self.state.value,
            "base_url": str(self.base),
            **self._stats.snapshot(),
            "circuit": None if self.breaker is None else self.breaker.snapshot(),
            "retry_budget": None if self.retry_budget is None else self.retry_budget.snapshot(),
            "rate_limit": None if self.rate_limiter is None else self.rate_limiter.snapshot(),
            "pool": {"max_connections": self.max_connections},
        }


class ExternalAPISession:
    """Seed 002's raw session holder: ``async with ExternalAPISession(url) as s: s.session``.

    ``.session`` is a plain ``aiohttp.ClientSession`` on ``base_url``; it
    offers none of ``AsyncAPIManager``'s endpoint checks, retries or
    breaker, and is kept for code written against the seed.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        *,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
    ) -> None:
        # aiohttp resolves relative paths against a base URL ending in "/"
        # (and refuses one with a path that does not).
        self.base_url = f"{BaseURL.parse(base_url)}/"
        self.timeout = timeout
        self._ssl = _client_ssl_context(verify_ssl=verify_ssl, ca_bundle=ca_bundle)
        self.state = ManagerState.UNOPENED
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ClosedError("ExternalAPISession is not open; use initialize() or async with")
        return self._session

    async def initialize(self) -> None:
        if self.state is ManagerState.OPEN:
            return
        if self.state is ManagerState.CLOSED:
            raise ClosedError("ExternalAPISession is closed and cannot be reopened")
        self._session = aiohttp.ClientSession(
            base_url=self.base_url,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(
                limit=100, limit_per_host=20, ttl_dns_cache=DEFAULT_DNS_CACHE_TTL, ssl=self._ssl
            ),
            trust_env=False,
        )
        self.state = ManagerState.OPEN

    async def close(self) -> None:
        if self.state is ManagerState.CLOSED:
            return
        self.state = ManagerState.CLOSED
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    aclose = close

    async def __aenter__(self) -> ExternalAPISession:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# -- helpers ---------------------------------------------------------------------


def _client_ssl_context(*, verify_ssl: bool, ca_bundle: str | None) -> ssl.SSLContext:
    """The one TLS context of a session, built (and its files read) up front.

    ``ca_bundle`` replaces the system CA store rather than adding to it: a
    private API's CA is then the only one trusted for it.
    """
    if not verify_ssl:
        if ca_bundle is not None:
            raise ConfigError(
                f"ca_bundle {ca_bundle!r} has no effect with verify_ssl=false; drop one of them"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_bundle is None:
        context = ssl.create_default_context()
    else:
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            # FileNotFoundError, PermissionError, or "no certificate in the file".
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise ConfigError(f"ca_bundle {ca_bundle!r} cannot be loaded: {reason}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def _tls_reason(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake, without aiohttp's wrapping."""
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientSSLError) and exc.__cause__ is not None:
        cause = exc.__cause__
    return tls_reason(cause)


def _checked_headers(headers: Mapping[str, str], *, configured: bool) -> dict[str, str]:
    where = "configured" if configured else "request"
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME_OK.match(name):
            raise (ConfigError if configured else InvalidRequestError)(
                f"{where} header name is not a valid token"
            )
        if not isinstance(value, str) or not _HEADER_VALUE_OK.match(value):
            # The value is never echoed: it may be a credential.
            raise (ConfigError if configured else InvalidRequestError)(
                f"{where} header {name!r} has a value with control characters"
            )
        if name.lower() in _FORBIDDEN_HEADERS:
            raise (ConfigError if configured else InvalidRequestError)(
                f"{where} header {name!r} may not be set"
            )
        out[name] = value
    return out


def _configured_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Every configured header value, whatever the header's name, and its parts."""
    secrets: list[str] = []
    for name, value in headers.items():
        if name.lower() not in _VOCABULARY_HEADERS:
            secrets.extend(_credential_forms(value))
    return tuple(secrets)


def _request_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """A caller's own header values, where the name says they are credentials."""
    secrets: list[str] = []
    for name, value in headers.items():
        # Idempotency-Key names a "key" but is no credential: a job sends a new
        # one with every call, and masking it would compile a mask per call.
        if _SENSITIVE_HEADER.search(name) and name.lower() != _IDEMPOTENCY_KEY:
            secrets.extend(_credential_forms(value))
    return tuple(secrets)


def _credential_forms(value: str) -> list[str]:
    """The value, the credential after an auth scheme, and a Basic password."""
    forms = [value]
    scheme, _, credential = value.partition(" ")
    credential = credential.strip()
    if credential and scheme.isalpha():
        forms.append(credential)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credential, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            _, colon, password = decoded.partition(":")
            if colon:
                forms.extend((decoded, password))
    return forms


@functools.lru_cache(maxsize=64)
def _mask_of(secrets: tuple[str, ...]) -> SecretMask:
    # A caller repeating the same credential header reuses its compiled mask.
    return SecretMask(secrets)


def _has_idempotency_key(*header_sets: Mapping[str, str] | None) -> bool:
    return any(
        name.lower() == _IDEMPOTENCY_KEY and value
        for headers in header_sets
        if headers
        for name, value in headers.items()
    )


def _query_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    if not params:
        return None
    if not isinstance(params, Mapping):
        raise InvalidRequestError("params must be an object of query parameters")
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, bool):
                out.append((str(key), "true" if item else "false"))
            elif isinstance(item, str | int | float):
                out.append((str(key), str(item)))
            else:
                raise InvalidRequestError(
                    f"query parameter {str(key)[:64]!r} must be a string, number or boolean"
                )
    return out


def _encode_body(data: Any) -> tuple[bytes | None, str | None]:
    if data is None:
        return None, None
    if isinstance(data, bytes):
        return data, "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), "text/plain; charset=utf-8"
    try:
        return orjson.dumps(data), "application/json"
    except TypeError:
        raise InvalidRequestError("request data is not JSON-serialisable") from None


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of a body of unknown or excessive length."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


class _TooDeepError(Exception):
    """Upstream JSON nested deeper than the manager's ``max_json_depth``."""


def _decode_body(
    raw: bytes, content_type: str, mask: SecretMask, cap: int, truncated: bool, max_depth: int
) -> Any:
    """The body as JSON (when whole and valid) or text, masked, cut to ``cap`` bytes."""
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace") if mask else None
    if "json" in content_type and not truncated:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # answered as text below, like any body that is not JSON
        else:
            if _deeper_than(raw, data, max_depth):
                raise _TooDeepError
            if text is not None and mask.may_occur(text):
                # Parsed strings have their JSON escapes undone already.
                data = mask.json(data)
            return data
    if text is None:
        return raw[:cap].decode("utf-8", errors="replace")
    # Masked first, cut second: a value straddling the cut leaves no prefix.
    keep = len(raw[:cap].decode("utf-8", errors="ignore")) if truncated else None
    return mask(text, keep)


def _deeper_than(raw: bytes, data: Any, max_depth: int) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # too few containers to nest that deep (the common case)
    # orjson refuses to encode more than 254 levels; wrapped in the levels
    # above max_depth, data is refused exactly when it is deeper than
    # max_depth. At C speed: a Python walk of 10 MB of JSON takes ~10x longer.
    # Anything orjson.loads returns encodes otherwise (a test pins both).
    wrapped = data
    for _ in range(_ORJSON_MAX_DEPTH - max_depth):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False


def _redirect_target(response: aiohttp.ClientResponse) -> URL | None:
    """The absolute URL a redirect names, or None when its Location is no URL."""
    try:
        return response.url.join(URL(response.headers["Location"]))
    except ValueError:  # a bad port, bracketed host or IDNA label (UnicodeError)
        return None


@functools.lru_cache(maxsize=256)
def _display_path(url: str) -> str:
    # Messages name the path only: a query string may carry an API key.
    scheme_end = url.find("://")
    path_start = url.find("/", scheme_end + 3)
    path = url[path_start:] if path_start >= 0 else "/"
    return path.partition("?")[0][:200]


def _upstream_failed(result: Result) -> bool:
    """Does this attempt count against the breaker? 4xx means the upstream is up."""
    if result.error_type in {"timeout", "connection_error"}:
        return True
    return result.status_code is not None and result.status_code >= 500
