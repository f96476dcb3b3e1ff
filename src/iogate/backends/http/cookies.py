"""The API manager's cookie jar: it keeps none and has none to send.

One manager serves every caller (every key of a gateway), so a cookie kept
from one caller's reply would go out with the next caller's requests: the
jar stores nothing (aiohttp's ``DummyCookieJar``). aiohttp still asks it for
the cookies of every request and adds a caller's ``cookies=`` to what it
returns; ``DummyCookieJar`` builds a new empty ``SimpleCookie`` each time
(about 2,300 instructions per request, measured). ``NoCookieJar`` returns one
shared empty cookie that refuses to be filled, so nothing can be added to it
and carried over: the manager never passes ``cookies=`` (a caller who needs
one sends a ``Cookie`` header), and anything that did would fail loudly.
"""

from __future__ import annotations

from http.cookies import BaseCookie
from typing import Any, NoReturn

import aiohttp
from yarl import URL

__all__ = ["NoCookieJar"]


class _Empty(BaseCookie[str]):
    """An empty cookie that cannot be filled."""

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("the API manager's cookie jar keeps no cookies")

    __setitem__ = load = update = setdefault = _refuse


_EMPTY = _Empty()


class NoCookieJar(aiohttp.DummyCookieJar):
    """Stores no cookie, sends none."""

    def filter_cookies(self, request_url: URL) -> BaseCookie[str]:
        return _EMPTY
