"""ResponseResult: a 2xx reply's headers copied (and masked) only when read."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from iogate.backends.http.cookies import NoCookieJar
from iogate.backends.http.response import UNREAD, ResponseResult, copy_headers
from iogate.core.redact import SecretMask
from iogate.core.result import Result

SECRET = "s3cret-token-value"


def _reply(mask: SecretMask | None = None) -> ResponseResult:
    source = CIMultiDictProxy(
        CIMultiDict({"Content-Type": "application/json", "X-Echo": f"Bearer {SECRET}"})
    )
    reply = ResponseResult(
        True, {"id": 1}, None, None, None, None, 0.0, 1, None, 200, False, UNREAD
    )
    reply._source = source
    reply._mask = mask or SecretMask([SECRET])
    return reply


def _plain(headers: dict[str, str] | None) -> Result:
    return Result(True, {"id": 1}, status_code=200, headers=headers)


MASKED = {"Content-Type": "application/json", "X-Echo": "Bearer ***"}


def test_headers_are_a_plain_masked_dict_of_str() -> None:
    headers = _reply().headers
    assert headers == MASKED
    assert type(headers) is dict
    assert all(type(name) is str for name in headers)  # not istr: orjson takes them


def test_headers_are_copied_once_and_then_kept() -> None:
    reply = _reply()
    first = reply.headers
    assert reply.headers is first
    assert reply._source is None  # the reply's view is let go


def test_to_dict_and_equality_see_the_headers() -> None:
    reply = _reply()
    assert reply.to_dict()["headers"] == MASKED
    assert reply == _plain(MASKED)
    assert _plain(MASKED) == reply
    assert reply != _plain({"Content-Type": "application/json"})
    assert reply != "not a result"


def test_a_header_set_by_hand_replaces_the_replys() -> None:
    reply = _reply()
    reply.headers = None
    assert reply.headers is None
    reply.headers = {"A": "b"}
    assert reply.headers == {"A": "b"}


def test_copies_keep_the_headers() -> None:
    reply = _reply()
    assert dataclasses.replace(reply, attempts=2).headers == MASKED
    assert pickle.loads(pickle.dumps(_reply())).headers == MASKED
    assert copy.copy(_reply()).headers == MASKED
    assert copy.deepcopy(_reply()).headers == MASKED


def test_serialised_as_a_plain_result() -> None:
    # orjson serialises a Result (a dataclass) natively; a reply must too.
    assert orjson.dumps(_reply()) == orjson.dumps(_plain(MASKED))
    assert dataclasses.asdict(_reply()) == dataclasses.asdict(_plain(MASKED))
    assert dataclasses.is_dataclass(_reply())


def test_repr_never_shows_the_secret() -> None:
    assert SECRET not in repr(_reply())


def test_copy_headers_without_secrets_keeps_values() -> None:
    source = CIMultiDictProxy(CIMultiDict([("X-A", "1"), ("x-b", "2")]))
    assert copy_headers(source, SecretMask([])) == {"X-A": "1", "x-b": "2"}


async def test_the_cookie_jar_has_nothing_to_send_and_takes_nothing() -> None:
    jar = NoCookieJar()
    cookies = jar.filter_cookies(URL("http://example.invalid/"))
    assert not cookies
    with pytest.raises(TypeError):
        cookies.load({"sid": "x"})
    with pytest.raises(TypeError):
        cookies["sid"] = "x"  # type: ignore[assignment]
    assert not jar.filter_cookies(URL("http://example.invalid/"))
