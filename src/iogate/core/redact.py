"""Keeping secrets out of messages: DSN passwords and known secret values.

``SecretMask`` hides a fixed set of values (an API's configured header
values) in whatever an upstream sends back. An echo seldom repeats a value
byte for byte: serialisers escape it on the way out. The mask matches each
value literally and in the encodings standard serialisers produce, in any mix
within one occurrence: JSON string escapes (``\\/``, ``\\"``, ``\\\\``,
``\\t``, ``\\uXXXX`` with surrogate pairs, hex in either case),
percent-encoding of the UTF-8 bytes (``%2F``/``%2f``, ``+`` for a space) and
HTML character references (``&#47;``, ``&#x2F;``, ``&amp;``). An encoding
applied twice (JSON inside a JSON string) is not undone; a caller that parses
JSON masks the parsed strings, which removes one layer first.

Values shorter than ``MIN_SECRET_LENGTH`` characters are not masked: a one-
to three-character value cannot be a credential worth the name (fewer than a
million printable guesses) and masking it would shred ordinary text ("1",
"on", "v2" everywhere in a reply).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MIN_SECRET_LENGTH", "SecretMask", "redact_text", "redact_url"]

MIN_SECRET_LENGTH = 4

_MASK = "***"
_SECRET_QUERY_KEYS = re.compile(
    r"(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?token|sslpassword)=)[^&\s]*"
)
# The longest one character of a secret can become once encoded: four UTF-8
# bytes percent-encoded, a JSON surrogate pair, or an HTML reference with up
# to three leading zeros are all at most 12 characters.
_MAX_ENCODED_CHAR = 12
# The only ways an ASCII letter or digit can be written other than as itself.
_ALNUM_ESCAPES = ("\\u", "%", "&#")
_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_JSON_SHORT_ESCAPES = {"/": r"\\/", '"': r"\\\"", "\\": r"\\\\", "\t": r"\\t"}
_HTML_NAMED = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}


def redact_url(url: str) -> str:
    """``scheme://user:***@host:port/db?password=***`` for display."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{_MASK}@{hostinfo}" if ":" in userinfo else f"{user}@{hostinfo}"
    query = _SECRET_QUERY_KEYS.sub(rf"\1{_MASK}", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each (non-trivial) secret in ``text``."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, _MASK)
    return text


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


class SecretMask:
    """Masks a fixed set of values in text, literally and in escaped forms.

    ``mask(text)`` returns ``text`` with every occurrence replaced by
    ``***``; ``mask(text, keep=n)`` also cuts the result to what stood in the
    first ``n`` characters of ``text``. Masking first and cutting second is
    what keeps a secret that straddles the cut from leaving as a prefix: give
    it a text that runs at least ``window`` characters past ``n``.
    """

    __slots__ = ("_anchors", "_pattern", "secrets", "window")

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: "Bearer abc" is masked whole, not as "Bearer ***".
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self.secrets: tuple[str, ...] = tuple(values)
        self.window = _MAX_ENCODED_CHAR * max((len(s) for s in values), default=0)
        self._pattern = re.compile("|".join(_encoded_forms(s) for s in values)) if values else None
        # The regex costs ~60 ns a character; a substring search is ~300x
        # cheaper. Each value's longest run of letters and digits can only
        # be hidden by an escape that writes a letter or digit otherwise, so
        # a text holding neither that run nor such an escape holds no value.
        anchors = [max(_ALNUM_RUN.findall(s), key=len, default="") for s in values]
        self._anchors: tuple[str, ...] | None = tuple(anchors) if all(anchors) else None

    def __repr__(self) -> str:
        return f"<SecretMask of {len(self.secrets)} values>"  # never the values

    def __bool__(self) -> bool:
        return self._pattern is not None

    def may_occur(self, text: str) -> bool:
        """False only when no value, in any handled form, can be in ``text``."""
        if self._pattern is None:
            return False
        if self._anchors is None:
            return True
        return any(anchor in text for anchor in self._anchors) or any(
            escape in text for escape in _ALNUM_ESCAPES
        )

    def __call__(self, text: str, keep: int | None = None) -> str:
        pattern = self._pattern
        if pattern is None or not self.may_occur(text):
            return text if keep is None else text[:keep]
        if keep is None:
            return pattern.sub(_MASK, text)
        pieces: list[str] = []
        position = 0
        for match in pattern.finditer(text):
            start = match.start()
            if start >= keep:
                break
            pieces.append(text[position:start])
            pieces.append(_MASK)
            position = match.end()
        if position < keep:
            pieces.append(text[position:keep])
        # A mask straddling the cut is cut too; masks only shorten the text,
        # so the result is never longer (in characters or bytes) than the cut.
        return "".join(pieces)[:keep]

    def json(self, value: Any) -> Any:
        """A parsed JSON ``value`` with every string in it (keys too) masked.

        Recursive: bound the depth of ``value`` first.
        """
        if isinstance(value, str):
            return self(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {self(key): self.json(item) for key, item in value.items()}
        return value


def _encoded_forms(secret: str) -> str:
    """A regex matching ``secret`` with each character in any handled form."""
    return "".join(_char_forms(char) for char in secret)


def _char_forms(char: str) -> str:
    code = ord(char)
    forms = [re.escape(char)]
    if code < 0x10000:
        forms.append(rf"\\u(?i:{code:04x})")
    else:
        offset = code - 0x10000
        high, low = 0xD800 + (offset >> 10), 0xDC00 + (offset & 0x3FF)
        forms.append(rf"\\u(?i:{high:04x})\\u(?i:{low:04x})")
    if char in _JSON_SHORT_ESCAPES:
        forms.append(_JSON_SHORT_ESCAPES[char])
    forms.append("".join(f"%(?i:{byte:02x})" for byte in char.encode()))
    if char == " ":
        forms.append(r"\+")
    forms.append(f"&#0{{0,3}}{code};")
    forms.append(f"&#[xX]0{{0,3}}(?i:{code:x});")
    if char in _HTML_NAMED:
        forms.append(f"&{_HTML_NAMED[char]};")
    return f"(?:{'|'.join(forms)})"
