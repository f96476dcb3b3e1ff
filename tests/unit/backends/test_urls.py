"""Endpoint joining: a refused SSRF corpus, accepted paths, and a property test.

The integration suite (tests/integration/http) sends the same corpus through
``AsyncAPIManager`` with a second upstream on 127.0.0.2 counting connections.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from iogate.backends.urls import BaseURL, join_endpoint
from iogate.core.errors import ConfigError, InvalidRequestError

BASE = BaseURL.parse("http://127.0.0.1:8080/v1")

# Every string here must be refused. "evil" is 127.0.0.2, the integration
# tests' canary upstream.
SSRF_CORPUS = [
    "http://127.0.0.2:8080/",
    "https://127.0.0.2/x",
    "HTTP://127.0.0.2/",
    "//127.0.0.2/x",
    "//127.0.0.2:8080",
    "///127.0.0.2/x",
    "\\\\127.0.0.2\\x",
    "/\\127.0.0.2/x",
    "\\/127.0.0.2/x",
    "@127.0.0.2/x",
    "/@127.0.0.2",
    ":pass@127.0.0.2/x",
    "/users/%40127.0.0.2",
    "../x",
    "/../x",
    "/users/../../x",
    "/users/..",
    "/./x",
    "/%2e%2e/x",
    "/%2E%2E/x",
    "/.%2e/x",
    "/%252e%252e/x",
    "/%25252e%25252e/x",
    "/..%2fx",
    "/..%252fx",
    "/%2e%2e%2fx",
    "/users/..%5c..%5cx",
    "/%2F%2F127.0.0.2/x",
    "/%252F%252F127.0.0.2/x",
    "/users\r\nHost: 127.0.0.2",
    "/users%0d%0aHost:%20127.0.0.2",
    "/users%250d%250aX: y",
    "/users\nX-Injected: 1",
    "/users\x00",
    "/users\u2028x",
    "/users\u200bx",
    "/users#@127.0.0.2",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "gopher://127.0.0.2:6379/_x",
    "/%zz%ff%fe",
    "/x?next=%0d%0aHost:127.0.0.2",
]


@pytest.mark.parametrize("endpoint", SSRF_CORPUS)
def test_ssrf_corpus_is_refused(endpoint: str) -> None:
    assert len(SSRF_CORPUS) >= 25
    with pytest.raises(InvalidRequestError) as info:
        join_endpoint(BASE, endpoint)
    assert info.value.error_type == "invalid_request"
    assert "127.0.0.2" not in str(info.value)  # the message names the rule only


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("/users/1", "http://127.0.0.1:8080/v1/users/1"),
        ("users/1", "http://127.0.0.1:8080/v1/users/1"),
        ("", "http://127.0.0.1:8080/v1"),
        ("/", "http://127.0.0.1:8080/v1/"),
        ("/users/", "http://127.0.0.1:8080/v1/users/"),
        ("/users?page=2&q=a%20b", "http://127.0.0.1:8080/v1/users?page=2&q=a%20b"),
        ("/search?email=a@b.example", "http://127.0.0.1:8080/v1/search?email=a@b.example"),
        ("/files/a%2Fb", "http://127.0.0.1:8080/v1/files/a%2Fb"),
        ("/v1/users:batchGet", "http://127.0.0.1:8080/v1/v1/users:batchGet"),
        ("/caf\u00e9/...x", "http://127.0.0.1:8080/v1/caf\u00e9/...x"),
    ],
)
def test_relative_paths_join_under_the_base(endpoint: str, expected: str) -> None:
    assert join_endpoint(BASE, endpoint) == expected


def test_root_base_url() -> None:
    root = BaseURL.parse("https://API.example.com")
    assert join_endpoint(root, "/users") == "https://api.example.com/users"
    assert root.port == 443


@pytest.mark.parametrize(
    "base",
    [
        "ftp://h/x",
        "h/x",
        "http:///x",
        "http://user:secret@h/x",
        "http://h/x?token=1",
        "http://h/x#f",
        "http://h:99999/",
    ],
)
def test_bad_base_urls_are_config_errors(base: str) -> None:
    with pytest.raises(ConfigError) as info:
        BaseURL.parse(base)
    assert "secret" not in str(info.value)


def test_non_string_endpoint_is_refused() -> None:
    with pytest.raises(InvalidRequestError):
        join_endpoint(BASE, 42)  # type: ignore[arg-type]


def _stays_under_base(joined: str) -> None:
    # yarl is what aiohttp parses the URL with, so it is the judge here.
    url = URL(joined)
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 8080)
    assert url.user is None
    assert url.path == "/v1" or url.path.startswith("/v1/")
    assert ".." not in url.path.split("/")


_NASTY = st.sampled_from(
    [
        "/",
        "\\",
        "@",
        ":",
        "..",
        ".",
        "%",
        "%2e",
        "%2f",
        "%5c",
        "%25",
        "?",
        "#",
        "//",
        "http:",
        "\r",
        "\n",
        "\x00",
        "127.0.0.2",
        "%40",
        "%0d%0a",
        "~",
        ";",
        "&",
        "=",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_NASTY, st.text(max_size=4)), max_size=12).map("".join))
def test_no_generated_endpoint_leaves_the_base_url(endpoint: str) -> None:
    try:
        joined = join_endpoint(BASE, endpoint)
    except InvalidRequestError:
        return
    _stays_under_base(joined)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_no_ascii_endpoint_leaves_the_base_url(endpoint: str) -> None:
    try:
        joined = join_endpoint(BASE, endpoint)
    except InvalidRequestError:
        return
    _stays_under_base(joined)
