"""What must never reach a log: URL passwords, tokens, the configured secrets."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from iogate.core.redact import redact_text, redact_url, url_password

__all__ = ["Redactor", "secrets_of"]

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]+")
_BEARER_HINT = re.compile(r"(?i)bearer|basic|token")


class Redactor:
    """Masks what must never reach a log: URL passwords, tokens, known secrets."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= 4}, key=len))[::-1]

    def __call__(self, text: str) -> str:
        # Known values first: a configured secret may itself look like a URL.
        text = redact_text(text, self.secrets)
        # The regexes only where they can match: most log fields are short
        # words (a method, a route, an outcome) and every line pays for this.
        if "://" in text:
            text = _URL.sub(lambda m: redact_url(m.group(0)), text)
        if _BEARER_HINT.search(text):
            text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
        return text

    def needed(self, text: str) -> bool:
        """Whether ``__call__`` could change ``text`` (or a part of it): a cheap
        screen, so a line whose fields are all plain words is masked in one test."""
        if "://" in text:
            return True
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered or "token" in lowered:
            return True
        for secret in self.secrets:  # noqa: SIM110 -- any() over a generator costs twice as much
            if secret in text:
                return True
        return False


def secrets_of(settings: Any) -> list[str]:
    """Every secret value a ``Settings`` holds: API keys, header values, DSN passwords."""
    secrets: list[str] = []
    for key in settings.gateway.api_keys:
        if key.key:
            secrets.append(key.key)
    for api in settings.apis.values():
        for value in api.headers.values():
            secrets.append(value)
            # "Bearer abc": the token alone may be logged by a library.
            secrets.extend(part for part in value.split() if len(part) >= 8)
    for db in settings.databases.values():
        if db.url:
            password = url_password(db.url)
            if password:
                # As written in the URL and as a driver sees it (percent-decoded).
                secrets.extend({password, unquote(password)})
    return secrets
