"""uvicorn, with read deadlines for slow clients.

uvicorn bounds only the idle time between requests on a kept-alive
connection (``timeout_keep_alive``). A client that trickles its headers, its
body, or sends nothing at all after connecting would hold a socket and, once
its headers are in, a request task for ever: ``request_timeout`` starts only
in the handler. ``GuardedHttpToolsProtocol`` adds the two missing deadlines
at the protocol level, where the bytes arrive:

- ``header_timeout``: from the connection's opening (first request) or from
  the first byte of a request (later ones) until its headers are complete.
  A connection that sent part of a request gets ``408 Request Timeout``; one
  that sent nothing is closed without an answer, as the keep-alive timer does.
- ``body_timeout``: from the end of the headers until the body is complete.
  The client gets a 408 (when no answer has started); the handler waiting for
  the body sees ``http.disconnect`` and ends.

Both are deadlines for the whole phase, not idle timers: one byte a second
does not keep them away. Timers are armed only when a phase outlives the
``data_received`` call that began it, so a request that arrives in one read
(nearly all of them) costs no timer at all. ``keep_alive_timeout`` is
uvicorn's own ``timeout_keep_alive``.

The deadlines travel to worker processes inside ``ServerConfig``, which
uvicorn pickles into each worker.

Serving (:func:`bind` then :func:`run`): the socket is bound before anything
announces the gateway, so a busy port is one line, not a log after
"serving". SIGTERM drains: uvicorn stops accepting, lets in-flight requests
finish for up to ``gateway.shutdown_timeout`` seconds, closes idle
keep-alive connections, runs the lifespan shutdown, and the process exits 0.
SIGHUP reloads the config: in one process :class:`iogate.gateway.reload.ReloadableApp`
swaps it in place; with workers, uvicorn's supervisor replaces the workers
one by one once the parent has validated the new config.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess

from iogate.gateway.settings import GatewaySettings

__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "BindError",
    "GuardedHttpToolsProtocol",
    "ServerConfig",
    "apply_timeouts",
    "bind",
    "build_config",
    "run",
]

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
WORKER_HEALTHCHECK_TIMEOUT = 30
# uvicorn's exit status when the application failed to start.
_STARTUP_FAILURE = 3
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request Timeout"
)

logger = logging.getLogger("iogate.gateway.server")


class ServerConfig(uvicorn.Config):
    """uvicorn's ``Config`` plus the read deadlines the protocol enforces."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT


# The read phase of a connection, as plain ints (an enum member look-up costs
# as much as the rest of the bookkeeping).
_IDLE = 0  # no byte of a request yet (a fresh connection)
_HEADERS = 1  # part of a request's headers arrived, not all
_BODY = 2  # headers complete, body not yet
_DONE = 3  # request complete; answering, or idle under keep-alive (uvicorn's timer)
_PHASE_NAMES = ("headers", "headers", "body", "done")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body read deadlines.

    The phase is read from uvicorn's own state after each ``data_received``
    (the request's ``scope`` is replaced when a request begins, its ``cycle``
    when the headers are complete, and ``cycle.more_body`` clears when the body
    is), so the parser callbacks are not overridden: a request read in one
    ``data_received`` (nearly all of them) costs one override and a few
    attribute reads, and arms no timer. A phase that outlives the call in
    which it began gets a timer for the whole phase, counted from that call
    (the same loop iteration as its first byte); the first request's headers
    count from the connection's opening.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if isinstance(config, ServerConfig):
            self.header_timeout = config.header_timeout
            self.body_timeout = config.body_timeout
        else:
            self.header_timeout = DEFAULT_HEADER_TIMEOUT
            self.body_timeout = DEFAULT_BODY_TIMEOUT
        self._armed = _DONE  # the phase the running timer is for (_DONE: none)
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is still waiting for headers.
        self._rearm(_IDLE)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.scope is self.scope
            and (not cycle.more_body or cycle.response_complete)
        ):
            # The latest request is complete: the common case ends here.
            if self._deadline is not None:
                self._rearm(_DONE)
            return
        if self.scope is None:
            phase = _IDLE
        elif cycle is None or cycle.scope is not self.scope:
            phase = _HEADERS  # a request began; its headers are not all in
        else:
            phase = _BODY
        if phase != self._armed:
            self._rearm(phase)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    # -- deadlines -----------------------------------------------------------------

    def _rearm(self, phase: int) -> None:
        """Run the timer of ``phase``: none for _DONE; the first request's
        headers keep the timer started when the connection opened."""
        if phase == _HEADERS and self._armed == _IDLE and self._deadline is not None:
            self._armed = _HEADERS
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._armed = phase
        if phase == _DONE or self.transport.is_closing():
            return
        limit = self.body_timeout if phase == _BODY else self.header_timeout
        self._deadline = self.loop.call_later(limit, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        phase = self._armed
        logger.info(
            "closing a connection from %s: request %s not received within %ss",
            self.client[0] if self.client else "?",
            _PHASE_NAMES[phase],
            self.body_timeout if phase == _BODY else self.header_timeout,
        )
        cycle = self.cycle if phase == _BODY else None
        if cycle is not None:
            # The handler waiting for the body sees a disconnect; whatever it
            # sends after this is dropped instead of following our answer.
            answered = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if not answered:
                self.transport.write(_REQUEST_TIMEOUT)
        elif phase == _HEADERS:  # part of a request came: answer it
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def build_config(
    app: Any,
    gateway: GatewaySettings,
    *,
    log_level: str,
    workers: int = 1,
    factory: bool = False,
) -> ServerConfig:
    """The server configuration of ``iogate serve`` for ``gateway``'s settings."""
    config = ServerConfig(
        app,
        host=gateway.host,
        port=gateway.port,
        http=GuardedHttpToolsProtocol,
        workers=workers,
        factory=factory,
        log_level=log_level,
        log_config=None,
        access_log=False,
        server_header=False,
        # Annotated int, but only ever handed to loop.call_later: seconds as a float.
        timeout_keep_alive=gateway.keep_alive_timeout,  # type: ignore[arg-type]
        # With workers: how long a replacement worker (SIGHUP) may take to
        # start, and to answer the supervisor's ping. uvicorn's 5 s is less
        # than a loaded machine needs to import the gateway.
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_TIMEOUT,
    )
    apply_timeouts(config, gateway)
    return config


def apply_timeouts(config: ServerConfig, gateway: GatewaySettings) -> None:
    """``gateway``'s connection timeouts and drain bound onto ``config``.

    uvicorn reads them when a connection opens (the read deadlines,
    keep-alive) and when it shuts down (the drain), so a reloaded config
    applies them to new connections and to the next SIGTERM.
    """
    # Annotated int, but only ever handed to loop.call_later: seconds as a float.
    config.timeout_keep_alive = gateway.keep_alive_timeout  # type: ignore[assignment]
    # Annotated int | None, but only ever handed to asyncio.timeout.
    config.timeout_graceful_shutdown = gateway.shutdown_timeout  # type: ignore[assignment]
    config.header_timeout = gateway.header_timeout
    config.body_timeout = gateway.body_timeout


class BindError(OSError):
    """The gateway's address cannot be bound; the message names host:port."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound as uvicorn binds one (``SO_REUSEADDR``, IPv6
    for a host with ``:``); ``BindError`` names the address and the reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise BindError(exc.errno, f"cannot listen on {shown}: {reason}") from None
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


class _ReloadingMultiprocess(Multiprocess):
    """uvicorn's supervisor, whose SIGHUP (replace the workers one by one)
    first validates the config, so a bad one is refused in one log line
    while the old workers keep serving."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], check: Callable[[], None]
    ) -> None:
        super().__init__(config, sockets)
        self._check = check

    def handle_hup(self) -> None:
        try:
            self._check()
        except Exception as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            logger.error("config reload refused, the workers keep the previous config: %s", detail)
            return
        logger.info("config is valid: replacing the workers one by one")
        super().handle_hup()


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's drain: uvicorn raises the signal again; let it pass."""


def run(
    config: ServerConfig,
    *,
    sockets: list[socket.socket] | None = None,
    check_reload: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT: ``uvicorn.run``'s loop for a ready-made config.

    ``sockets``: already bound (:func:`bind`). ``check_reload`` validates the
    config when the multi-worker supervisor gets SIGHUP. A drained SIGTERM
    returns normally (exit 0): uvicorn raises the signal again once it has
    shut down, and the handler installed here, which uvicorn restores first,
    lets it pass.
    """
    if config.workers == 1:
        config.load_app()
    signal.signal(signal.SIGTERM, _terminated)
    server = uvicorn.Server(config=config)
    try:
        if config.workers > 1:
            listening = sockets or [config.bind_socket()]
            supervisor = (
                Multiprocess(config, sockets=listening)
                if check_reload is None
                else _ReloadingMultiprocess(config, listening, check_reload)
            )
            supervisor.run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    if config.workers == 1 and not server.started:
        sys.exit(_STARTUP_FAILURE)
