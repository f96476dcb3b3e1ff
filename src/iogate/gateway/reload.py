"""Configuration reload on SIGHUP, for ``iogate serve`` in one process.

``ReloadableApp`` is the ASGI application uvicorn serves. It holds one
*generation* at a time, a gateway app built by ``create_app`` from one
``Settings``, and hands each request to the current one. On SIGHUP:

1. the config file is read and validated as at start-up (``load``); a
   ``ConfigError`` refuses the reload with one log line, and the current
   generation keeps serving;
2. a new generation is built and its lifespan started: its managers are
   opened while the old ones still serve. A start-up failure refuses the
   reload the same way;
3. the new generation becomes current in one assignment: every request
   that starts afterwards, on a new or a kept-alive connection, sees only
   the new config (keys, scopes, databases, APIs, operations, limits);
4. the old generation is retired: requests already running on it finish on
   its managers (up to ``gateway.shutdown_timeout`` seconds), then its
   lifespan ends and closes them.

What a reload cannot change is the listening socket: the bind address and
port stay those of the start (a change is logged and ignored), and a config
that would leave a non-loopback gateway without keys is refused.
Reloads are serialised; signals arriving during one are merged into one
more reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from iogate.core.errors import ConfigError
from iogate.gateway.settings import Settings

__all__ = ["ReloadableApp", "one_line"]

logger = logging.getLogger("iogate.gateway.reload")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def one_line(exc: BaseException) -> str:
    """An exception as one log line: its message, else its type."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class _Generation:
    """One gateway app and its ASGI lifespan, driven by hand."""

    def __init__(self, settings: Settings, app: Any, number: int) -> None:
        self.settings = settings
        self.app = app
        self.number = number
        self.active = 0  # requests running on it
        self.retired = False
        self.idle = asyncio.Event()
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        # Each phase's outcome: None, or the exception that ended it.
        self._started: asyncio.Future[BaseException | None] = loop.create_future()
        self._stopped: asyncio.Future[BaseException | None] = loop.create_future()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run the app's lifespan start-up; raises what made it fail."""
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.create_task(self._run(), name=f"iogate-config-{self.number}")
        try:
            failure = await asyncio.shield(self._started)
        except asyncio.CancelledError:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            raise
        if failure is not None:
            raise failure

    async def stop(self) -> None:
        """Run the app's lifespan shutdown (closes its managers); idempotent."""
        if self._task is None:
            return
        if not self._stopped.done() and not self._task.done():
            self._inbox.put_nowait({"type": "lifespan.shutdown"})
        failure = await asyncio.shield(self._stopped)
        if failure is not None and self._started.done() and self._started.result() is None:
            logger.error("closing config generation %d failed: %s", self.number, one_line(failure))
        with contextlib.suppress(BaseException):
            await self._task

    def retire(self) -> None:
        self.retired = True
        if self.active == 0:
            self.idle.set()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        failure: BaseException | None = None
        try:
            await self.app(scope, self._inbox.get, self._send)
        except Exception as exc:
            # Starlette reports a failed phase with the traceback's text, then
            # raises: the exception itself makes one line.
            failure = exc
        except asyncio.CancelledError as exc:
            failure = exc
            raise
        finally:
            if not self._started.done():
                self._started.set_result(failure or RuntimeError("the app ended its lifespan"))
            if not self._stopped.done():
                self._stopped.set_result(failure)

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete" and not self._started.done():
            self._started.set_result(None)
        elif kind == "lifespan.shutdown.complete" and not self._stopped.done():
            self._stopped.set_result(None)
        # *.failed: the app raises next, and _run reports that exception.


class ReloadableApp:
    """The served ASGI app: the current gateway generation, swapped on SIGHUP.

    ``build(settings)`` makes a gateway app (``create_app``); ``load()``
    reads and validates the config again (None: no reload). ``source``
    names the config in log lines. ``on_reload(settings)`` runs once a
    new config serves (``iogate serve`` passes the server's timeouts on).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        build: Callable[[Settings], Any],
        load: Callable[[], Settings] | None = None,
        source: str = "the config",
        on_reload: Callable[[Settings], None] | None = None,
    ) -> None:
        self._first = settings
        self._build = build
        self._load = load
        self._source = source
        self._on_reload = on_reload
        self._current: _Generation | None = None
        self._retiring: dict[_Generation, asyncio.Task[None]] = {}
        self._reload_task: asyncio.Task[None] | None = None
        self._reload_pending = False
        self._closing = False
        self._generations = 0
        self.reloads = 0  # successful ones

    @property
    def settings(self) -> Settings:
        """The settings of the generation serving new requests."""
        return self._current.settings if self._current is not None else self._first

    @property
    def app(self) -> Any:
        """The gateway app serving new requests (None before start-up)."""
        return self._current.app if self._current is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        generation = self._current
        if generation is None:  # uvicorn serves only after start-up; a direct caller may not
            raise RuntimeError("the gateway has not started")
        generation.active += 1
        try:
            await generation.app(scope, receive, send)
        finally:
            generation.active -= 1
            if generation.retired and generation.active == 0:
                generation.idle.set()

    # -- lifespan ---------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            self._current = await self._start(self._first)
        except Exception as exc:
            await send({"type": "lifespan.startup.failed", "message": one_line(exc)})
            return
        self._listen_for_hup()
        await send({"type": "lifespan.startup.complete"})
        if self._reload_pending:  # SIGHUP while starting: apply it now
            self.request_reload()
        await receive()  # lifespan.shutdown
        self._closing = True
        task = self._reload_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        # uvicorn has let the in-flight requests finish (or cancelled them at
        # gateway.shutdown_timeout): close every generation still open.
        retiring = dict(self._retiring)
        for waiting in retiring.values():
            waiting.cancel()
        await asyncio.gather(*retiring.values(), return_exceptions=True)
        generations = [g for g in (self._current, *retiring) if g is not None]
        await asyncio.gather(*(g.stop() for g in generations))
        await send({"type": "lifespan.shutdown.complete"})

    async def _start(self, settings: Settings) -> _Generation:
        self._generations += 1
        generation = _Generation(settings, self._build(settings), self._generations)
        await generation.start()
        return generation

    def _listen_for_hup(self) -> None:
        if self._load is None:
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request_reload)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread / no Unix
            logger.debug("SIGHUP reload not available in this thread")

    def note_early_hup(self, signum: int = 0, frame: object = None) -> None:
        """A ``signal.signal`` handler for SIGHUP before start-up: reload once started."""
        self._reload_pending = True

    # -- reload -----------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload soon (the SIGHUP handler); merged with a reload under way."""
        if self._load is None:
            return
        if self._closing:
            logger.info("SIGHUP while shutting down: no reload")
            return
        self._reload_pending = True
        if self._current is None:
            return  # still starting: _lifespan calls again
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.create_task(self._reload_all(), name="iogate-reload")

    async def _reload_all(self) -> None:
        while self._reload_pending and not self._closing:
            self._reload_pending = False
            await self._reload_once()

    async def _reload_once(self) -> bool:
        assert self._load is not None
        assert self._current is not None
        logger.info("reloading %s", self._source)
        try:
            settings = await asyncio.to_thread(self._load)
            self._check_bind(settings)
        except ConfigError as exc:
            logger.error("config reload refused, still serving the previous config: %s", exc)
            return False
        except Exception as exc:  # a reload must never take the gateway down
            logger.error(
                "config reload refused, still serving the previous config: %s", one_line(exc)
            )
            return False
        try:
            generation = await self._start(settings)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error(
                "config reload refused (the new config failed to start: %s); "
                "still serving the previous config",
                one_line(exc),
            )
            return False
        old, self._current = self._current, generation
        self.reloads += 1
        _add_log_secrets(settings)
        if self._on_reload is not None:
            try:
                self._on_reload(settings)
            except Exception as exc:
                logger.error("after the reload: %s", one_line(exc))
        resources = [f"{name} ({db.type})" for name, db in settings.databases.items()]
        resources += [f"{name} (api)" for name in settings.apis]
        logger.info(
            "config reloaded: serving %s, %d key(s); %d request(s) finishing on the previous one",
            ", ".join(resources) or "no resources",
            len(settings.gateway.api_keys),
            old.active,
        )
        self._retiring[old] = asyncio.create_task(self._retire(old), name="iogate-retire")
        return True

    def _check_bind(self, settings: Settings) -> None:
        """A reload keeps the socket: the bind must not need keys the config dropped."""
        serving = self.settings.gateway
        if not serving.is_loopback() and not settings.gateway.api_keys:
            raise ConfigError(
                f"gateway.api_keys: the gateway listens on {serving.host}, a non-loopback "
                "host, so the config needs keys ([[gateway.api_keys]])"
            )

    async def _retire(self, generation: _Generation) -> None:
        generation.retire()
        bound = generation.settings.gateway.shutdown_timeout
        try:
            async with asyncio.timeout(bound):
                await generation.idle.wait()
        except TimeoutError:
            logger.warning(
                "%d request(s) still running on the previous config after %gs "
                "(gateway.shutdown_timeout); closing its resources under them",
                generation.active,
                bound,
            )
        finally:
            self._retiring.pop(generation, None)
        await generation.stop()


def _add_log_secrets(settings: Settings) -> None:
    """The log redactor learns the reloaded config's secrets (and keeps the old ones)."""
    from iogate.gateway.logging import Redactor, secrets_of

    fresh = secrets_of(settings)
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        redactor = getattr(formatter, "redactor", None)
        if isinstance(redactor, Redactor):
            formatter.redactor = Redactor([*redactor.secrets, *fresh])  # type: ignore[union-attr]
