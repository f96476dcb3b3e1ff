"""Bodies in and out: a request's data and query encoded, a reply read and decoded.

What an upstream sends is input like any other: a reply is read up to a size
cap (``max_response_bytes`` for a success, ``ERROR_BODY_BYTES`` for the rest),
JSON nested deeper than ``max_json_depth`` levels is refused, and the body is
masked (``SecretMask``) before it is cut to its cap, so no prefix of a secret
survives the cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from iogate.core.errors import InvalidRequestError
from iogate.core.redact import SecretMask

__all__ = [
    "DEFAULT_ERROR_BODY_BYTES",
    "DEFAULT_MAX_JSON_DEPTH",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "TooDeepError",
    "decode_body",
    "deeper_than",
    "encode_body",
    "query_params",
    "read_capped",
]

DEFAULT_MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_ERROR_BODY_BYTES = 4096
# Below orjson's own limit (254 levels when encoding), with room left for the
# gateway's envelopes around ``data`` (Result, batch, job).
DEFAULT_MAX_JSON_DEPTH = 200
ORJSON_MAX_DEPTH = 254
_CHUNK = 64 * 1024


def query_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]] | None:
    """A caller's query parameters as pairs; lists repeat a key, None drops it."""
    if not params:
        return None
    if not isinstance(params, Mapping):
        raise InvalidRequestError("params must be an object of query parameters")
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            if isinstance(item, bool):
                out.append((str(key), "true" if item else "false"))
            elif isinstance(item, str | int | float):
                out.append((str(key), str(item)))
            else:
                raise InvalidRequestError(
                    f"query parameter {str(key)[:64]!r} must be a string, number or boolean"
                )
    return out


def encode_body(data: Any) -> tuple[bytes | None, str | None]:
    """(body, Content-Type): bytes as they are, text as UTF-8, anything else as JSON."""
    if data is None:
        return None, None
    if isinstance(data, bytes):
        return data, "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), "text/plain; charset=utf-8"
    try:
        return orjson.dumps(data), "application/json"
    except TypeError:
        raise InvalidRequestError("request data is not JSON-serialisable") from None


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of a body of unknown or excessive length; (bytes, cut)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.content.iter_chunked(_CHUNK):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            return b"".join(chunks)[:cap], True
    return b"".join(chunks), False


class TooDeepError(Exception):
    """Upstream JSON nested deeper than the manager's ``max_json_depth``."""


def decode_body(
    raw: bytes, content_type: str, mask: SecretMask, cap: int, truncated: bool, max_depth: int
) -> Any:
    """The body as JSON (when whole and valid) or text, masked, cut to ``cap`` bytes."""
    if not raw:
        return None
    # ``mask.secrets``, not ``mask``: no Python-level __bool__ on every reply.
    text = raw.decode("utf-8", errors="replace") if mask.secrets else None
    if "json" in content_type and not truncated:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # answered as text below, like any body that is not JSON
        else:
            # A body shorter than max_depth bytes cannot nest that deep.
            if len(raw) > max_depth and deeper_than(raw, data, max_depth):
                raise TooDeepError
            if text is not None and mask.may_occur(text):
                # Parsed strings have their JSON escapes undone already.
                data = mask.json(data)
            return data
    if text is None:
        return raw[:cap].decode("utf-8", errors="replace")
    # Masked first, cut second: a value straddling the cut leaves no prefix.
    keep = len(raw[:cap].decode("utf-8", errors="ignore")) if truncated else None
    return mask(text, keep)


def deeper_than(raw: bytes, data: Any, max_depth: int) -> bool:
    """Is ``data`` (parsed from ``raw``) nested deeper than ``max_depth`` levels?"""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # too few containers to nest that deep (the common case)
    # orjson refuses to encode more than 254 levels; wrapped in the levels
    # above max_depth, data is refused exactly when it is deeper than
    # max_depth. At C speed: a Python walk of 10 MB of JSON takes ~10x longer.
    # Anything orjson.loads returns encodes otherwise (a test pins both).
    wrapped = data
    for _ in range(ORJSON_MAX_DEPTH - max_depth):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False
