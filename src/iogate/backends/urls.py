"""Joining an endpoint to a base URL so that the result can never leave it.

An endpoint is a *relative path* (plus an optional query) appended to the
base URL's path: ``https://h/v1`` + ``/users/1`` -> ``https://h/v1/users/1``.
Anything that could make a URL parser pick another scheme, host or port, or
climb above the base path, is refused with ``InvalidRequestError`` before any
connection is opened:

* a scheme (``http:``, ``javascript:``), a scheme-relative ``//host``;
* ``\\`` (some parsers read it as ``/``), ``@`` in the path (userinfo tricks),
  ``#`` (fragments are never sent, and hide what follows);
* control, format and line-separator characters (CR/LF header injection);
* ``.`` or ``..`` segments, also percent-encoded or encoded several times
  over (``%2e%2e``, ``%252e%252e``, ``..%2f``), because a proxy or the
  upstream itself may decode once more than we do.

The check works on the fully decoded path, so no encoding of a refused
character gets through; the joined URL is then re-checked against the base's
origin as a second line of defence.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from iogate.core.errors import ConfigError, InvalidRequestError

__all__ = ["MAX_ENDPOINT_LENGTH", "BaseURL", "join_endpoint"]

MAX_ENDPOINT_LENGTH = 2048
# Decoding more often than this without reaching a fixed point is itself an attack.
_MAX_DECODE_ROUNDS = 4
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


@dataclass(frozen=True, slots=True)
class BaseURL:
    """A validated ``scheme://host[:port]/path`` without query or fragment."""

    scheme: str
    netloc: str
    host: str
    port: int
    path: str  # no trailing slash; "" for the root

    @classmethod
    def parse(cls, url: str) -> BaseURL:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ConfigError("base_url is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError("base_url must be an absolute http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ConfigError("base_url must not carry a query or a fragment")
        if "@" in parts.netloc:
            # Credentials in the URL would end up in logs; use headers instead.
            raise ConfigError("base_url must not carry credentials; configure headers instead")
        if _has_refused_char(url) or "\\" in url:
            raise ConfigError("base_url contains characters that are not allowed")
        default_port = 443 if scheme == "https" else 80
        return cls(
            scheme=scheme,
            netloc=parts.netloc.lower(),
            host=parts.hostname.lower(),
            port=port or default_port,
            path=parts.path.rstrip("/"),
        )

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def __str__(self) -> str:
        return f"{self.origin}{self.path}"

    def same_origin(self, url: str) -> bool:
        """True when ``url`` (absolute) has this base's scheme, host and port."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            return False
        return (
            parts.scheme.lower() == self.scheme
            and (parts.hostname or "").lower() == self.host
            and port == self.port
            and "@" not in parts.netloc
        )


def join_endpoint(base: BaseURL, endpoint: str) -> str:
    """The absolute URL for ``endpoint`` under ``base``; refuses unsafe input.

    Raises ``InvalidRequestError`` (error_type ``invalid_request``) with a
    message that names the rule, never the whole endpoint.
    """
    if not isinstance(endpoint, str):
        raise InvalidRequestError("endpoint must be a string")
    return _join(base, endpoint)


@functools.lru_cache(maxsize=1024)
def _join(base: BaseURL, endpoint: str) -> str:
    # Cached: the same few endpoints are joined over and over on a hot path,
    # and both arguments are immutable.
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise InvalidRequestError(f"endpoint longer than {MAX_ENDPOINT_LENGTH} characters")
    path, sep, query = endpoint.partition("?")
    _check_raw(endpoint, path)
    decoded = _fully_decoded(path)
    _check_decoded(decoded)
    _check_query(query)
    relative = path.lstrip("/")
    if relative or path.endswith("/"):
        joined = f"{base.origin}{base.path}/{relative}"
    else:
        joined = f"{base.origin}{base.path}"
    if sep:
        joined = f"{joined}?{query}"
    # Second line of defence: whatever the checks above missed, the parsed
    # result must still be on the base's origin and under its path.
    if not base.same_origin(joined) or not _under(base.path, urlsplit(joined).path):
        raise InvalidRequestError("endpoint would leave the base URL")
    return joined


def _check_raw(endpoint: str, path: str) -> None:
    if _has_refused_char(endpoint):
        raise InvalidRequestError("endpoint contains control or invisible characters")
    if "\\" in endpoint:
        raise InvalidRequestError("endpoint must not contain a backslash")
    if "#" in endpoint:
        raise InvalidRequestError("endpoint must not contain a fragment (#)")
    if path.startswith("//"):
        raise InvalidRequestError("endpoint must be a relative path, not //host")
    colon = path.find(":")
    if colon > 0 and "/" not in path[:colon] and all(c in _SCHEME_CHARS for c in path[:colon]):
        raise InvalidRequestError("endpoint must be a relative path, not an absolute URL")


def _fully_decoded(path: str) -> str:
    current = path
    for _ in range(_MAX_DECODE_ROUNDS):
        try:
            decoded = unquote(current, errors="strict") if "%" in current else current
        except UnicodeDecodeError:
            raise InvalidRequestError("endpoint contains invalid percent-encoding") from None
        if decoded == current:
            return decoded
        current = decoded
    raise InvalidRequestError("endpoint is percent-encoded too many times")


def _check_decoded(decoded: str) -> None:
    if _has_refused_char(decoded):
        raise InvalidRequestError("endpoint contains encoded control characters")
    if "\\" in decoded:
        raise InvalidRequestError("endpoint must not contain a backslash, even encoded")
    if "@" in decoded:
        raise InvalidRequestError("endpoint path must not contain '@'")
    if decoded.startswith("//"):
        raise InvalidRequestError("endpoint must be a relative path, not //host")
    for segment in decoded.split("/"):
        if segment in {".", ".."}:
            raise InvalidRequestError("endpoint must not contain '.' or '..' segments")
    colon = decoded.find(":")
    if colon > 0 and "/" not in decoded[:colon] and "://" in decoded:
        raise InvalidRequestError("endpoint must be a relative path, not an absolute URL")


def _check_query(query: str) -> None:
    if not query:
        return
    decoded = unquote(query)
    if _has_refused_char(decoded):
        raise InvalidRequestError("endpoint query contains encoded control characters")


def _has_refused_char(text: str) -> bool:
    if text.isascii():
        return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    return any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in text)


def _under(base_path: str, path: str) -> bool:
    return path == base_path or path.startswith(base_path + "/") or (not base_path and not path)
