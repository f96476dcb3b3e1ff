"""External HTTP APIs on aiohttp: one pooled session per API.

The pieces, one idea each:

- ``manager.py``: ``AsyncAPIManager``, a request's preparation, attempts,
  retries, breaker, budget and rate limit, its lifecycle and recording;
- ``wire.py``: one attempt on the wire, redirects, aiohttp's errors mapped to
  Results, a reply turned into a Result;
- ``body.py``: request data and query encoded, a reply read under its size cap
  and decoded (JSON depth bounded, secrets masked before the cut);
- ``headers.py``: header checks, which values are secrets, idempotency;
- ``tls.py``: the SSL context and a failed handshake's reason;
- ``session.py``: ``ExternalAPISession``, the seed's raw session holder.

aiohttp is imported only in this package.
"""

from iogate.backends.http.body import (
    DEFAULT_ERROR_BODY_BYTES,
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_RESPONSE_BYTES,
)
from iogate.backends.http.manager import DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT, AsyncAPIManager
from iogate.backends.http.session import ExternalAPISession

__all__ = [
    "DEFAULT_ERROR_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_JSON_DEPTH",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_TIMEOUT",
    "AsyncAPIManager",
    "ExternalAPISession",
]
