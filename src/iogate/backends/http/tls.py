"""TLS for API sessions: one client context per session, why a handshake failed,
and the connection probe behind ``ping()`` (for https the handshake is part of it).

Certificates are verified by default against the system CA store;
``ca_bundle`` (a PEM file) replaces that store, ``verify_ssl=False`` turns
verification off. The context is built once, when the manager is created,
so a missing bundle is a ``ConfigError`` at start-up, not a failure per
request.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from iogate.backends.urls import BaseURL
from iogate.core.errors import APIConnectionError, ConfigError, OperationTimeoutError, tls_reason

__all__ = ["client_ssl_context", "handshake_failure", "probe"]


def client_ssl_context(*, verify_ssl: bool, ca_bundle: str | None) -> ssl.SSLContext:
    """The one TLS context of a session, built (and its files read) up front.

    ``ca_bundle`` replaces the system CA store rather than adding to it: a
    private API's CA is then the only one trusted for it.
    """
    if not verify_ssl:
        if ca_bundle is not None:
            raise ConfigError(
                f"ca_bundle {ca_bundle!r} has no effect with verify_ssl=false; drop one of them"
            )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_bundle is None:
        context = ssl.create_default_context()
    else:
        try:
            context = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            # FileNotFoundError, PermissionError, or "no certificate in the file".
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
            raise ConfigError(f"ca_bundle {ca_bundle!r} cannot be loaded: {reason}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def handshake_failure(exc: BaseException) -> str:
    """OpenSSL's reason for a failed handshake, without aiohttp's wrapping."""
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientSSLError) and exc.__cause__ is not None:
        cause = exc.__cause__
    return tls_reason(cause)


async def probe(name: str, base: BaseURL, context: ssl.SSLContext, timeout: float) -> None:
    """Raise an iogate error unless ``base`` accepts a connection within ``timeout``.

    For https the handshake is part of the check: an untrusted certificate
    makes every request fail, so it makes ``/ready`` fail too.
    """
    tls = context if base.scheme == "https" else None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(base.host, base.port, ssl=tls)
    except TimeoutError:
        raise OperationTimeoutError(
            f"{name}: {base.origin} did not accept a connection within {timeout}s"
        ) from None
    except ssl.SSLError as exc:
        raise APIConnectionError(f"{name}: {handshake_failure(exc)} for {base.host}") from exc
    except OSError as exc:
        raise APIConnectionError(f"{name}: cannot connect to {base.origin}") from exc
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
