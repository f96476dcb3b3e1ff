"""Request headers: which are allowed, which are secrets, which make a call idempotent.

Configured header values never appear in a Result, an error message or the
stats. What an upstream sends back is masked with
``iogate.core.redact.SecretMask``: every configured header value whatever the
header's name (content-negotiation headers such as ``Accept`` excepted), the
credential after an auth scheme and a Basic password; a caller's own header
values where the header's name says they are credentials.

Configured headers are checked once, when the manager is created; a caller's
headers on every call that has any (none is the common case, and costs
nothing).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Mapping

from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, InvalidRequestError
from iogate.core.redact import SecretMask
from iogate.resilience.deadline_headers import DEADLINE_HEADERS, ClientDeadline

__all__ = [
    "IDEMPOTENT_METHODS",
    "METHODS",
    "checked_headers",
    "configured_secrets",
    "deadline_forms",
    "deadline_header_form",
    "has_idempotency_key",
    "mask_with",
    "request_secrets",
    "take_deadline_headers",
]

METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
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


def checked_headers(headers: Mapping[str, str], *, configured: bool) -> dict[str, str]:
    """A copy of ``headers`` once every name and value is safe to send.

    Refused with ``ConfigError`` (configured) or ``InvalidRequestError``
    (a caller's); a refused value is never echoed: it may be a credential.
    """
    where = "configured" if configured else "request"
    error = ConfigError if configured else InvalidRequestError
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME_OK.match(name):
            raise error(f"{where} header name is not a valid token")
        if not isinstance(value, str) or not _HEADER_VALUE_OK.match(value):
            raise error(f"{where} header {name!r} has a value with control characters")
        if name.lower() in _FORBIDDEN_HEADERS:
            raise error(f"{where} header {name!r} may not be set")
        out[name] = value
    return out


def deadline_header_form(name: str | None) -> str | None:
    """The configured ``deadline_header`` in its canonical spelling; refused if unknown."""
    if name is None:
        return None
    form = DEADLINE_HEADERS.get(name.lower())
    if form is None:
        raise ConfigError(
            f"deadline_header must be one of {', '.join(DEADLINE_HEADERS.values())} "
            f"or None, got {name!r}"
        )
    return form


def deadline_forms(default: str | None, deadline: Deadline) -> tuple[str, ...]:
    """Headers that tell the upstream how long it has: the client's forms, or ours.

    Only for a call made under a caller's deadline (every gateway request
    has one): a call bounded by nothing but the manager's own timeout sends
    none, and pays nothing for it.
    """
    if default is None or deadline.expires_at is None:
        return ()
    if isinstance(deadline, ClientDeadline):
        return deadline.headers
    return (default,)


def take_deadline_headers(headers: dict[str, str], forms: tuple[str, ...]) -> tuple[str, ...]:
    """Drop a caller's own deadline headers from ``headers``; the forms to send.

    The time left is ours to tell: a larger value would promise the upstream
    time that does not exist. It is sent in the forms the caller chose.
    """
    for name in [n for n in headers if n.lower() in DEADLINE_HEADERS]:
        del headers[name]
        form = DEADLINE_HEADERS[name.lower()]
        if form not in forms:
            forms = (*forms, form)
    return forms


def configured_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Every configured header value, whatever the header's name, and its parts."""
    secrets: list[str] = []
    for name, value in headers.items():
        if name.lower() not in _VOCABULARY_HEADERS:
            secrets.extend(_credential_forms(value))
    return tuple(secrets)


def request_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """A caller's own header values, where the name says they are credentials."""
    secrets: list[str] = []
    for name, value in headers.items():
        # Idempotency-Key names a "key" but is no credential: a job sends a new
        # one with every call, and masking it would compile a mask per call.
        if _SENSITIVE_HEADER.search(name) and name.lower() != _IDEMPOTENCY_KEY:
            secrets.extend(_credential_forms(value))
    return tuple(secrets)


def mask_with(mask: SecretMask, headers: Mapping[str, str]) -> SecretMask:
    """``mask`` extended by the credentials among a caller's ``headers``."""
    extra = request_secrets(headers)
    return _mask_of(mask.secrets + extra) if extra else mask


def has_idempotency_key(headers: Mapping[str, str]) -> bool:
    return any(name.lower() == _IDEMPOTENCY_KEY and value for name, value in headers.items())


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
