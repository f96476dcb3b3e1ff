"""A hostile (or merely careless) upstream, against a real local aiohttp server.

What an upstream sends back is input: it may echo the credentials we send,
escaped as its serialiser likes, in a body cut at our size cap or in its
headers; it may nest JSON deeper than anything can encode, or redirect to a
``Location`` that is not a URL. None of that may reach a caller unmasked or
turn into an exception (a 500 at the gateway): each case is a clean Result,
through the manager and through ``POST /api/execute``.

The upstream runs in its own thread and event loop, so the same server
serves async manager tests and the synchronous gateway ``TestClient``.
"""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from aiohttp import web
from fastapi.testclient import TestClient

from iogate.backends.http import DEFAULT_ERROR_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH, AsyncAPIManager
from iogate.backends.http import body as http_body
from iogate.core.redact import SecretMask
from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings

# Secrets under names no "looks secret" rule would catch, with the characters
# serialisers escape: "/" (JSON "\/"), "+" and " " (forms), & < > " (HTML, Go).
PASS = "hunter2/pass+word and more"
CREDENTIAL = 'cr3d&<ent>ial"quoted"value'
BASIC_PASSWORD = "basic-pw-5ecret/x"
BASIC = base64.b64encode(f"svc-user:{BASIC_PASSWORD}".encode()).decode()
HEADERS = {
    "X-Pass": PASS,
    "X-Credential": CREDENTIAL,
    "Authorization": f"Basic {BASIC}",
    "X-Tier": "v2",  # below the floor: left alone
    "Accept": "application/json",  # protocol vocabulary: left alone
}
SECRETS = (PASS, CREDENTIAL, BASIC, BASIC_PASSWORD)


def _json_slash(value: str) -> str:
    """PHP's json_encode: "/" written as "\\/"."""
    return json.dumps(value)[1:-1].replace("/", "\\/")


def _json_unicode(value: str) -> str:
    """Every character as a \\uXXXX escape (what no literal search can see)."""
    return "".join(f"\\u{ord(char):04X}" for char in value)


def _json_go(value: str) -> str:
    """Go's encoding/json: & < > as \\u0026 \\u003c \\u003e."""
    escaped = json.dumps(value)[1:-1]
    return escaped.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


ENCODINGS = {
    "literal": lambda value: value,
    "json": lambda value: json.dumps(value)[1:-1],
    "json-slash": _json_slash,
    "json-unicode": _json_unicode,
    "json-go": _json_go,
    "percent": lambda value: quote(value, safe=""),
    "percent-lower": lambda value: re.sub(
        "%[0-9A-F]{2}", lambda match: match.group(0).lower(), quote(value, safe="")
    ),
    "form": quote_plus,
    "html": lambda value: html.escape(value, quote=True),
    "html-numeric": lambda value: "".join(f"&#{ord(char)};" for char in value),
}


def _forms(value: str) -> set[str]:
    return {encode(value) for encode in ENCODINGS.values()}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_no_secret(shown: Any) -> None:
    for text in _strings(shown):
        for secret in SECRETS:
            for form in _forms(secret):
                assert form not in text, (form, text[:300])


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# -- the upstream ---------------------------------------------------------------------


@dataclass
class Hostile:
    base_url: str
    raw_url: str  # answers every request with RAW_REDIRECT, byte for byte


# A Location that is not even UTF-8: only a raw socket sends that.
RAW_REDIRECT = b"HTTP/1.1 302 Found\r\nLocation: http://\xff\xfe/\r\nContent-Length: 0\r\n\r\n"


def _build_app() -> web.Application:
    async def echo_json(request: web.Request) -> web.Response:
        # ?encoding=json-slash etc.: each header value encoded, inside a JSON string.
        encode = ENCODINGS[request.query.get("encoding", "json")]
        fields = ",".join(
            f'{json.dumps(name)}:"{encode(value)}"' for name, value in request.headers.items()
        )
        return web.Response(
            body=f'{{"headers":{{{fields}}},"n":[1,true,null]}}'.encode(),
            content_type="application/json",
        )

    async def echo_text(request: web.Request) -> web.Response:
        encode = ENCODINGS[request.query["encoding"]]
        lines = [f"{name}: {encode(value)}" for name, value in request.headers.items()]
        status = int(request.query.get("status", "200"))
        return web.Response(text="\n".join(lines), status=status, content_type="text/plain")

    async def echo_headers(request: web.Request) -> web.Response:
        headers = {
            f"X-Echo-{index}": quote(value, safe="") if index % 2 else value
            for index, value in enumerate(request.headers.values())
        }
        return web.json_response({"ok": True}, headers=headers)

    async def echo_at(request: web.Request) -> web.Response:
        # An error page repeating one credential at a chosen offset, long
        # enough to be cut at the error-body cap.
        encode = ENCODINGS[request.query.get("encoding", "literal")]
        secret = request.headers[request.query["header"]]
        if "decode" in request.query:  # "Basic b64" -> "user:password"
            secret = base64.b64decode(secret.split()[1]).decode()
        offset = int(request.query["offset"])
        body = "x" * offset + encode(secret) + "y" * 6000
        content_type = request.query.get("type", "text/plain")
        return web.Response(body=body.encode(), status=500, content_type=content_type)

    async def deep(request: web.Request) -> web.Response:
        levels = int(request.match_info["levels"])
        status = int(request.query.get("status", "200"))
        return web.Response(body=_nested(levels), status=status, content_type="application/json")

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": request.query["to"]})

    app = web.Application()
    app.router.add_route("*", "/v1/echo/json", echo_json)
    app.router.add_route("*", "/v1/echo/text", echo_text)
    app.router.add_route("*", "/v1/echo/headers", echo_headers)
    app.router.add_route("*", "/v1/echo/at", echo_at)
    app.router.add_route("*", "/v1/deep/{levels}", deep)
    app.router.add_route("*", "/v1/redirect", redirect)
    return app


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def raw_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(RAW_REDIRECT)
        await writer.drain()
        writer.close()

    async def start() -> None:
        runner = web.AppRunner(_build_app(), shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        raw = await asyncio.start_server(raw_answer, "127.0.0.1", 0)
        holder.update(runner=runner, raw=raw, port=runner.addresses[0][1])
        holder["raw_port"] = raw.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "hostile upstream did not start"

    async def stop() -> None:
        holder["raw"].close()
        await holder["runner"].cleanup()

    try:
        yield Hostile(
            base_url=f"http://127.0.0.1:{holder['port']}/v1",
            raw_url=f"http://127.0.0.1:{holder['raw_port']}/v1",
        )
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
async def api(hostile: Hostile) -> AsyncIterator[AsyncAPIManager]:
    async with AsyncAPIManager(
        hostile.base_url, headers=HEADERS, retry=False, circuit_breaker=False, name="hostile"
    ) as manager:
        yield manager


# -- echoed credentials ---------------------------------------------------------------


@pytest.mark.parametrize(
    "encoding", ["json", "json-slash", "json-unicode", "json-go", "percent", "html"]
)
async def test_an_echo_in_a_json_body_is_masked_in_every_encoding(
    api: AsyncAPIManager, encoding: str
) -> None:
    result = await api.get("/echo/json", params={"encoding": encoding})
    assert result.success, result
    echoed = result.data["headers"]
    assert echoed["X-Pass"] == "***"
    assert echoed["X-Credential"] == "***"
    assert echoed["Authorization"] == "***"
    # JSON syntax and values that are no secret stay as they were.
    assert result.data["n"] == [1, True, None]
    assert "v2" in echoed["X-Tier"]
    assert_no_secret(result.to_dict())


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_an_echo_in_a_text_body_is_masked_in_every_encoding(
    api: AsyncAPIManager, encoding: str
) -> None:
    ok = await api.get("/echo/text", params={"encoding": encoding})
    failed = await api.get("/echo/text", params={"encoding": encoding, "status": "500"})
    assert ok.success
    assert failed.error_type == "http_error"
    for result in (ok, failed):
        assert "X-Pass: ***" in result.data, result.data
        assert_no_secret(result.to_dict())
    assert f"X-Tier: {ENCODINGS[encoding]('v2')}" in ok.data


async def test_echoed_response_headers_are_masked_but_vocabulary_is_not(
    api: AsyncAPIManager,
) -> None:
    result = await api.get("/echo/headers")
    assert result.success
    assert_no_secret(result.to_dict())
    assert result.headers is not None
    assert result.headers["Content-Type"].startswith("application/json")
    echoed = [value for name, value in result.headers.items() if name.startswith("X-Echo-")]
    assert "***" in echoed
    # The configured Accept value, as sent (literally or percent-encoded).
    assert {"application/json", "application%2Fjson"} & set(echoed)


async def test_a_basic_password_is_masked_when_echoed_decoded(
    api: AsyncAPIManager,
) -> None:
    result = await api.get(
        "/echo/at", params={"header": "Authorization", "offset": "10", "decode": "1"}
    )
    assert "svc-user:***" in result.data or result.data.startswith("x" * 10 + "***")
    assert_no_secret(result.to_dict())


@pytest.mark.parametrize("encoding", ["literal", "json-slash", "json-unicode", "percent"])
async def test_a_secret_straddling_the_error_body_cap_leaves_no_prefix(
    api: AsyncAPIManager, encoding: str
) -> None:
    cap = DEFAULT_ERROR_BODY_BYTES
    for offset in (cap - 20, cap - 4, cap - 1, cap - 100):
        for content_type in ("text/plain", "application/json"):
            result = await api.get(
                "/echo/at",
                params={
                    "header": "X-Pass",
                    "offset": str(offset),
                    "encoding": encoding,
                    "type": content_type,
                },
            )
            assert result.error_type == "http_error"
            assert result.truncated is True
            body = result.data
            assert isinstance(body, str)
            assert len(body.encode()) <= cap
            # Not the secret, and not the start of it that fits before the cut.
            tail = body[offset:]
            assert tail.startswith("***") or tail == "***"[: cap - offset], (offset, tail[:40])
            assert_no_secret(result.to_dict())


async def test_a_callers_own_credential_header_is_masked_in_the_echo(
    api: AsyncAPIManager,
) -> None:
    token = "caller-token-0123456789/abc"
    result = await api.get(
        "/echo/json", params={"encoding": "json-slash"}, headers={"X-Api-Key": token}
    )
    assert result.data["headers"]["X-Api-Key"] == "***"


async def test_no_secrets_configured_means_no_masking_work(hostile: Hostile) -> None:
    async with AsyncAPIManager(hostile.base_url, retry=False) as plain:
        result = await plain.get("/echo/json", params={"encoding": "json-slash"})
    assert result.success
    assert "***" not in json.dumps(result.data)


def test_the_mask_skips_texts_that_cannot_hold_a_secret() -> None:
    mask = SecretMask(SECRETS)
    assert not mask.may_occur('{"id": 1, "name": "plain ascii words"}')
    # An escape that can hide a letter or a digit forces the full search.
    assert mask.may_occur("\\u0068unter2")
    assert mask("\\u0068unter2/pass+word and more") == "***"
    assert "hunter2" not in repr(mask)
    assert not SecretMask(["ab", "xyz"])  # all below the floor


# -- nesting and redirects -----------------------------------------------------------


async def test_json_nested_deeper_than_the_limit_is_a_clean_http_error(
    api: AsyncAPIManager,
) -> None:
    at_limit = await api.get(f"/deep/{DEFAULT_MAX_JSON_DEPTH}")
    over = await api.get(f"/deep/{DEFAULT_MAX_JSON_DEPTH + 1}")
    far_over = await api.get("/deep/300")
    error_page = await api.get("/deep/300", params={"status": "500"})
    assert at_limit.success
    for result in (over, far_over, error_page):
        assert not result.success
        assert result.error_type == "http_error"
        assert f"deeper than {DEFAULT_MAX_JSON_DEPTH} levels" in (result.error or "")
        assert result.data is None
    assert over.status_code == 200
    assert error_page.status_code == 500
    # Deeper than orjson parses at all: answered as text, like any invalid JSON.
    unparsed = await api.get("/deep/2000")
    assert unparsed.success
    assert isinstance(unparsed.data, str)


async def test_a_lower_depth_limit_is_honoured(hostile: Hostile) -> None:
    async with AsyncAPIManager(hostile.base_url, max_json_depth=10, retry=False) as shallow:
        assert (await shallow.get("/deep/10")).success
        assert (await shallow.get("/deep/11")).error_type == "http_error"


def test_the_depth_check_relies_on_orjsons_encoder_limit() -> None:
    # _deeper_than wraps data in (254 - max_depth) lists and lets orjson refuse.
    orjson.dumps(orjson.loads(_nested(http_body.ORJSON_MAX_DEPTH)))
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(_nested(http_body.ORJSON_MAX_DEPTH + 1)))
    assert not http_body.deeper_than(_nested(5), orjson.loads(_nested(5)), 5)
    assert http_body.deeper_than(_nested(6), orjson.loads(_nested(6)), 5)


BAD_LOCATIONS = [
    "http://[::1",
    "http://127.0.0.1:99999/v1/ok",
    "http://127.0.0.1:-1/",
    "//[zz]/x",
]


@pytest.mark.parametrize("location", BAD_LOCATIONS)
async def test_a_redirect_to_a_malformed_location_is_a_clean_http_error(
    api: AsyncAPIManager, location: str
) -> None:
    result = await api.get("/redirect", params={"to": location})
    assert result.error_type == "http_error", result
    assert result.status_code == 302
    assert "invalid Location" in (result.error or "")


async def test_a_location_that_is_not_utf8_is_a_clean_http_error(hostile: Hostile) -> None:
    async with AsyncAPIManager(hostile.raw_url, retry=False) as raw:
        result = await raw.get("/anything")
    assert result.error_type == "http_error", result
    assert result.status_code == 302


# -- through the gateway --------------------------------------------------------------


@pytest.fixture
def gateway(hostile: Hostile) -> Iterator[TestClient]:
    headers = ", ".join(
        f"{json.dumps(name)} = {json.dumps(value)}" for name, value in HEADERS.items()
    )
    config = f"""
[apis.hostile]
base_url = "{hostile.base_url}"
timeout = 5
headers = {{ {headers} }}
retry = {{ attempts = 1 }}

[apis.raw]
base_url = "{hostile.raw_url}"
timeout = 5
"""
    app = create_app(parse_settings(config, env={}))
    with TestClient(app, base_url="http://localhost") as client:
        yield client


def _call(client: TestClient, endpoint: str, api: str = "hostile") -> Any:
    return client.post(
        "/api/execute", json={"api_name": api, "method": "GET", "endpoint": endpoint}
    )


def test_the_gateway_answers_hostile_upstreams_with_502_not_500(gateway: TestClient) -> None:
    for endpoint in (
        "/deep/300",
        f"/deep/{DEFAULT_MAX_JSON_DEPTH + 1}",
        "/redirect?to=http%3A%2F%2F%5B%3A%3A1",
        "/redirect?to=http%3A%2F%2F127.0.0.1%3A99999%2F",
    ):
        response = _call(gateway, endpoint)
        assert response.status_code == 502, (endpoint, response.text)
        assert response.json()["error_type"] == "http_error"
    assert _call(gateway, "/x", api="raw").status_code == 502
    # The deepest JSON allowed still fits the gateway's envelope.
    deepest = _call(gateway, f"/deep/{DEFAULT_MAX_JSON_DEPTH}")
    assert deepest.status_code == 200
    assert _call(gateway, "/deep/2000").status_code == 200


def test_the_gateway_never_shows_an_echoed_secret(gateway: TestClient) -> None:
    for endpoint in (
        "/echo/json?encoding=json-slash",
        "/echo/json?encoding=json-unicode",
        "/echo/text?encoding=percent&status=500",
        "/echo/headers",
        f"/echo/at?header=X-Pass&offset={DEFAULT_ERROR_BODY_BYTES - 10}&encoding=json-slash",
    ):
        response = _call(gateway, endpoint)
        assert response.status_code in (200, 502), response.text
        assert_no_secret(response.json())
        for secret in SECRETS:
            for form in _forms(secret):
                assert form not in response.text


async def test_an_unknown_method_never_becomes_a_metric_label() -> None:
    """The method is checked after the event's label is chosen: a caller's
    string must not create a new series, only the closed set or "invalid"."""
    from iogate.backends.http import AsyncAPIManager
    from iogate.core import events

    seen: list[object] = []
    events.add_hook(seen.append)
    try:
        async with AsyncAPIManager("http://127.0.0.1:9/v1") as api:
            result = await api.request("BREW-COFFEE-1234", "/x")
    finally:
        events.remove_hook(seen.append)
    assert result.error_type == "invalid_request"
    assert "BREW-COFFEE" in (result.error or "")
    labels = {getattr(event, "operation", None) for event in seen}
    assert labels == {"invalid"}
