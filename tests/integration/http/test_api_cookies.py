"""No cookie outlives the call that carried it: one manager serves many callers.

The upstream's ``/v1/login`` sets ``sid=secret-1``; what it received is read
from ``upstream.requests``. The managers reach it as ``localhost``: aiohttp's
default cookie jar ignores cookies from an IP address, and would hide a
stored cookie from these tests.
"""

from __future__ import annotations

from collections.abc import Callable

from iogate.backends.http import AsyncAPIManager, ExternalAPISession

from .conftest import Upstream

MakeManager = Callable[..., AsyncAPIManager]


def cookies_received(upstream: Upstream, path: str) -> list[str | None]:
    """The Cookie header of each request to ``path``, in order (None: no header)."""
    return [r["headers"].get("Cookie") for r in upstream.requests if r["path"] == path]


async def test_a_cookie_the_upstream_sets_is_not_sent_on_later_calls(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(upstream.named_base_url) as api:
        login = await api.get("/login")
        assert login.success
        assert login.headers is not None
        assert login.headers["Set-Cookie"].startswith("sid=secret-1")
        assert (await api.get("/echo")).success
    assert cookies_received(upstream, "/v1/echo") == [None]


async def test_a_callers_cookie_header_reaches_that_call_only(
    upstream: Upstream, make_manager: MakeManager
) -> None:
    async with make_manager(upstream.named_base_url) as api:
        assert (await api.get("/login")).success
        with_cookie = await api.get("/echo", headers={"Cookie": "pref=dark"})
        assert (await api.get("/echo")).success
    assert cookies_received(upstream, "/v1/echo") == ["pref=dark", None]
    # A caller's Cookie value is a secret: the upstream's echo of it is masked.
    assert "pref=dark" not in str(with_cookie.data)


async def test_external_api_session_keeps_no_cookies(upstream: Upstream) -> None:
    async with ExternalAPISession(f"http://localhost:{upstream.port}", timeout=5.0) as holder:
        async with holder.session.get("/v1/login") as response:
            assert response.status == 200
            assert "sid" in response.cookies
        async with holder.session.get("/v1/echo") as response:
            assert response.status == 200
        async with holder.session.get("/v1/echo", cookies={"pref": "dark"}) as response:
            assert response.status == 200
    assert cookies_received(upstream, "/v1/echo") == [None, "pref=dark"]
