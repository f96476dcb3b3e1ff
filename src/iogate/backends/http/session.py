"""``ExternalAPISession``: seed 002's raw session holder, kept for code written against it."""

from __future__ import annotations

from typing import ClassVar

import aiohttp

from iogate.backends.http.tls import client_ssl_context
from iogate.backends.urls import BaseURL
from iogate.core.errors import ClosedError
from iogate.core.lifecycle import Lifecycle

__all__ = ["ExternalAPISession"]

_DNS_CACHE_TTL = 300


class ExternalAPISession(Lifecycle):
    """``async with ExternalAPISession(url) as s: s.session``.

    ``.session`` is a plain ``aiohttp.ClientSession`` on ``base_url``; it
    offers none of ``AsyncAPIManager``'s endpoint checks, retries or
    breaker. ``initialize()`` is the seed's name for ``open()``. It keeps no
    cookies: send them per request (``cookies=`` or a ``Cookie`` header).
    """

    _closed_noun: ClassVar[str] = "session"

    def __init__(
        self,
        base_url: str,
        timeout: float = 30.0,
        *,
        verify_ssl: bool = True,
        ca_bundle: str | None = None,
    ) -> None:
        super().__init__(name="ExternalAPISession")
        # aiohttp resolves relative paths against a base URL ending in "/"
        # (and refuses one with a path that does not).
        self.base_url = f"{BaseURL.parse(base_url)}/"
        self.timeout = timeout
        self._ssl = client_ssl_context(verify_ssl=verify_ssl, ca_bundle=ca_bundle)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ClosedError("ExternalAPISession is not open; use initialize() or async with")
        return self._session

    async def initialize(self) -> None:
        await self.open()

    async def _open(self) -> None:
        self._session = aiohttp.ClientSession(
            base_url=self.base_url,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            connector=aiohttp.TCPConnector(
                limit=100, limit_per_host=20, ttl_dns_cache=_DNS_CACHE_TTL, ssl=self._ssl
            ),
            trust_env=False,
            # As AsyncAPIManager: a session shared by several callers must not
            # carry one caller's cookies into another's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
