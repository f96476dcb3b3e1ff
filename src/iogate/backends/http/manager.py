"""``AsyncAPIManager``: one external HTTP API behind one pooled aiohttp session.

Every call becomes a ``Result`` and never raises for a failure: 2xx is a
success with the parsed JSON body (text when it is not JSON),
``status_code`` and the response headers; anything else is a failed Result
(``http_error`` with the size-capped upstream body as ``data``,
``rate_limited``, ``timeout``, ``connection_error``, ``circuit_open``,
``invalid_request``).

A request, in order: the endpoint is joined to the base URL
(``iogate.backends.urls`` refuses anything that could leave it), caller
headers are checked (``headers.py``), one deadline is set (the smaller of
``timeout`` and the caller's), then attempts run (``attempts.py``: breaker,
rate limit, budget, retries bounded by attempts, deadline and budget), each
on the wire in ``wire.py``. A call under a caller's ``Deadline`` tells the
upstream how long it has left (``Request-Timeout``, or the forms the
caller's ``ClientDeadline`` came in; ``deadline_header=None`` sends none).
aiohttp's own silent repeat of an idempotent request on a dropped
connection is switched off, so that every attempt is one the budget counted.
The session keeps no cookies: a Set-Cookie from the upstream is returned in
the Result's headers and never sent again.

The hot path, measured (docs/benchmarks.md, "The API path taken apart"):
what is fixed per manager (configured headers and their secrets, whether
they carry an Idempotency-Key, checked endpoints, the retry stop checks, one
timeout object) is worked out once; features that are off cost nothing; the
first attempt runs inline and the retry machinery is built only for a retry.
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import aiohttp

from iogate.backends.http.attempts import Attempts
from iogate.backends.http.body import (
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_RESPONSE_BYTES,
    encode_body,
    query_params,
)
from iogate.backends.http.cookies import NoCookieJar
from iogate.backends.http.headers import (
    IDEMPOTENT_METHODS,
    METHODS,
    checked_headers,
    configured_secrets,
    deadline_forms,
    deadline_header_form,
    has_idempotency_key,
    mask_with,
    take_deadline_headers,
)
from iogate.backends.http.tls import client_ssl_context, probe
from iogate.backends.http.wire import Call, Wire
from iogate.backends.urls import BaseURL, join_endpoint
from iogate.core import events
from iogate.core.deadline import Deadline
from iogate.core.errors import (
    APIConnectionError,
    CircuitOpenError,
    ClosedError,
    ConfigError,
    InvalidRequestError,
    IogateError,
    OperationTimeoutError,
)
from iogate.core.lifecycle import Lifecycle
from iogate.core.recording import record
from iogate.core.redact import SecretMask
from iogate.core.resource import Health, Kind, PoolStats, ResourceState, empty_pool_stats
from iogate.core.result import Result
from iogate.core.stats import OperationStats
from iogate.resilience.breaker import CircuitBreakerConfig
from iogate.resilience.budget import RetryBudget
from iogate.resilience.deadline_headers import (
    REQUEST_TIMEOUT,
)
from iogate.resilience.retry import Random, RetryPolicy, Sleep

if TYPE_CHECKING:
    from iogate.core.resource import Resource

__all__ = ["DEFAULT_DNS_CACHE_TTL", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "AsyncAPIManager"]

DEFAULT_MAX_CONNECTIONS = 30
DEFAULT_TIMEOUT = 60.0
DEFAULT_DNS_CACHE_TTL = 300
_URL_CACHE_SIZE = 256
_TRANSIENT = frozenset({"timeout", "connection_error"})

perf_counter = time.perf_counter
# Module constants: reading an enum member off its class costs ~0.2 µs (3.11).
_OPEN = ResourceState.OPEN
_API = Kind.API


class AsyncAPIManager(Lifecycle):
    """One external API: pooled session, retries, breaker, rate limit (seed 000).

    ``retry``, ``circuit_breaker`` accept their config object, a dict from a
    config file, or ``False`` to turn them off; ``rate_limit`` is a string
    such as ``"100/second"`` (``rate_limit_storage`` an async ``limits``
    storage URI to share it between processes). ``verify_ssl`` and
    ``ca_bundle`` configure HTTPS certificate checks (``tls.py``).
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
        super().__init__(name=name or self.base.host)
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
        self.deadline_header = deadline_header_form(deadline_header)
        self.verify_ssl = verify_ssl
        self.ca_bundle = ca_bundle
        self._ssl = client_ssl_context(verify_ssl=verify_ssl, ca_bundle=ca_bundle)
        self._headers = checked_headers(headers or {}, configured=True)
        self._mask = SecretMask(configured_secrets(self._headers))
        # Configured headers do not change: an Idempotency-Key among them
        # makes every call idempotent, decided once rather than per call.
        self._idempotent_by_config = has_idempotency_key(self._headers)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._stats = OperationStats()
        wire = Wire(
            self.base,
            timeout=self.timeout,
            max_response_bytes=max_response_bytes,
            max_json_depth=max_json_depth,
        )
        self._attempts = attempts = Attempts.configure(
            wire,
            name=self.name,
            retry=retry,
            circuit_breaker=circuit_breaker,
            rate_limit=rate_limit,
            rate_limit_storage=rate_limit_storage,
            retry_budget=retry_budget,
            clock=clock,
            sleep=sleep,
            random=random,
        )
        self.retry_policy = attempts.policy
        self.breaker = attempts.breaker
        self.rate_limiter = attempts.rate_limiter
        self.retry_budget = attempts.budget
        # Endpoints already checked and joined: the same few recur on a hot path.
        self._urls: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<AsyncAPIManager {self.name!r} {self.base} state={self.state.value}>"

    def _renamed(self, name: str) -> None:
        # Registered under another name (orchestrator.add_api): the breaker's
        # messages and the rate limit's key follow it.
        if self.breaker is not None:
            self.breaker.name = name
        if self.rate_limiter is not None:
            self.rate_limiter.name = name

    # -- the Resource surface (iogate.core.resource) ------------------------

    @property
    def kind(self) -> Kind:
        return Kind.API

    @property
    def target(self) -> str:
        """The base URL (``BaseURL`` refuses credentials in it, so none to redact)."""
        return str(self.base)

    def health(self) -> Health:
        return Health(self.state, self.breaker_state())

    def breaker_state(self) -> str:
        """``closed``/``open``/``half_open``, or ``disabled`` without a breaker."""
        return "disabled" if self.breaker is None else self.breaker.state.value

    def pool_stats(self) -> PoolStats:
        # aiohttp's connector keeps its counts private: the limit is what it
        # exposes, so the rest stays zero rather than read from internals.
        return empty_pool_stats(self.max_connections)

    def pool_details(self) -> dict[str, int]:
        return {"max_connections": self.max_connections}

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
            "pool": {**self.pool_stats(), **self.pool_details()},
        }

    # -- lifecycle (iogate.core.lifecycle) ----------------------------------

    async def initialize_session(self) -> None:
        """Open the pooled session; idempotent (seed 000's name for ``open()``)."""
        if self.state is not ResourceState.OPEN:
            await self._ensure_open()

    async def _open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=self.max_connections,
            ttl_dns_cache=DEFAULT_DNS_CACHE_TTL,
            ssl=self._ssl,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None),
            # Proxies from the environment would send our requests (and
            # credentials) somewhere the config does not name.
            trust_env=False,
            raise_for_status=False,
            # One manager serves every caller (every key of a gateway): a
            # cookie kept from one caller's reply would go out with the next
            # caller's requests. A caller who needs one sends a Cookie header.
            cookie_jar=NoCookieJar(),
        )
        # aiohttp silently repeats a GET/PUT/DELETE once when its connection
        # drops (RFC 9112 §9.3.1): an attempt that neither the retry policy
        # nor the retry budget would see. A test pins this private switch
        # (aiohttp's own test client sets it too).
        session._retry_connection = False
        self._session = session

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self.rate_limiter is not None:
            await self.rate_limiter.close()

    def _not_opened(self, timeout: float) -> IogateError:
        return APIConnectionError(f"{self.name}: session not opened within {timeout:.3g}s")

    # -- operations ---------------------------------------------------------

    async def get(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("GET", endpoint, data, params, headers)

    async def post(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("POST", endpoint, data, params, headers)

    async def put(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("PUT", endpoint, data, params, headers)

    async def patch(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("PATCH", endpoint, data, params, headers)

    async def delete(
        self,
        endpoint: str,
        data: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        return await self.request("DELETE", endpoint, data, params, headers)

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
        started = perf_counter()
        if type(method) is str and method in METHODS:  # "GET" from get(): no upper()
            verb = method
        else:
            verb = method.upper() if isinstance(method, str) else "?"
        call = Call(verb, False, self._clock)
        tracer = events.tracer
        if tracer is not None:  # the upstream continues the trace (W3C traceparent)
            span = tracer.start("api", self, verb, endpoint)
            headers = tracer.inject(headers)
        try:
            # The preparation and the first attempt run here, not in a helper
            # coroutine: one frame less per call (measured).
            if verb not in METHODS:
                raise InvalidRequestError(
                    f"method must be one of {', '.join(sorted(METHODS))}, got {verb[:16]!r}"
                )
            url = self._urls.get(endpoint) if type(endpoint) is str else None
            if url is None:
                url = join_endpoint(self.base, endpoint)  # checks it; raises if unsafe
                if len(self._urls) < _URL_CACHE_SIZE:
                    self._urls[endpoint] = url
            forms = () if deadline is None else deadline_forms(self.deadline_header, deadline)
            mask = self._mask
            extra_headers: dict[str, str] | None = None
            if headers:
                extra_headers = checked_headers(headers, configured=False)
                if forms:
                    forms = take_deadline_headers(extra_headers, forms)
                mask = mask_with(mask, extra_headers)
                call.idempotent = has_idempotency_key(extra_headers)
            query = query_params(params) if params else None
            body: bytes | None = None
            if data is not None:
                body, content_type = encode_body(data)
                if content_type is not None:
                    extra_headers = {**(extra_headers or {}), "Content-Type": content_type}
            call.idempotent = (
                call.idempotent or verb in IDEMPOTENT_METHODS or self._idempotent_by_config
            )
            # One deadline bounds every attempt and every wait between them.
            left: float | None = None  # its time left, when known without a clock read
            if deadline is not None and (
                (remaining := deadline.remaining()) is not None and remaining < self.timeout
            ):
                effective = deadline
            else:
                # The call is its own deadline (wire.Call): one object less per call.
                call.expires_at = self._clock() + self.timeout
                effective = call
                left = self.timeout
            if self.state is not _OPEN:
                await self._ensure_open(effective)
                left = None  # opening took some of it
            session = self._session
            assert session is not None
            # Only a caller's deadline can have passed already: our own was set
            # just above to a positive timeout (and opening waits within it).
            if effective is deadline and deadline.expired():
                raise OperationTimeoutError("deadline passed before the request started")
            attempts = self._attempts
            result = await attempts.attempt(
                session, call, url, query, body, extra_headers, effective, mask, forms, left
            )
            if not result.success and attempts.may_retry and attempts.should_retry(call, result):
                result = await attempts.retry(
                    result, session, call, url, query, body, extra_headers, effective, mask, forms
                )
        except IogateError as exc:
            result = Result.from_exception(exc)
        except BaseException as exc:
            if tracer is not None:
                tracer.finish(span, None, exc)
            raise
        result.resource = self._name
        result.operation = verb
        record(
            self._stats,
            result,
            started,
            self._name,
            _API,
            "http",
            verb if verb in METHODS else "invalid",  # labels from a closed set
            call.attempts or 1,
        )
        if tracer is not None:
            tracer.finish(span, result)
        return result

    # -- health --------------------------------------------------------------

    async def ping(self, timeout: float = 2.0) -> None:
        """Raise unless the breaker is not open and the upstream accepts TCP."""
        if self.state is ResourceState.CLOSED:
            raise ClosedError(f"{self.name}: manager is closed")
        if self.breaker is not None and self.breaker.state.value == "open":
            raise CircuitOpenError(
                f"{self.name}: circuit is open", retry_after=self.breaker.retry_after()
            )
        await probe(self.name, self.base, self._ssl, timeout)


if TYPE_CHECKING:
    _: Resource = AsyncAPIManager("http://example.invalid")
