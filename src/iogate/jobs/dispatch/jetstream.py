"""The NATS JetStream dispatcher (nats-py, ``iogate[nats]``).

The recommended broker (bench/brokers.py): JetStream deduplicates by
message id, and its redelivery time (``ack_wait``) does not depend on TCP
noticing a dead peer. nats-py is imported only when a
:class:`JetStreamDispatcher` is created or used, never when this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from iogate.core.errors import ClosedError, ConfigError, InvalidRequestError
from iogate.core.redact import redact_url
from iogate.jobs.dispatch.common import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RETRY_BACKOFF,
    BrokerDispatcher,
    State,
    check_name,
    check_prefetch,
    close_quietly,
    finish,
    first_error,
    logger,
    publish_all,
    retry_wait,
    stop_all,
)
from iogate.jobs.interfaces import ChunkHandler
from iogate.jobs.model import ChunkTask, JobError

if TYPE_CHECKING:
    import nats.aio.client
    import nats.aio.msg
    import nats.js

__all__ = ["JetStreamDispatcher"]

# JetStream: messages delivered and not yet acknowledged, summed over every
# worker (each holds at most its ``prefetch``); past it the server pauses.
MAX_ACK_PENDING = 1000
FETCH_WAIT = 2.0  # seconds one JetStream pull request waits for messages
# nats-py after a connection drops: attempts 1 s apart (then consume fails).
NATS_RECONNECT_ATTEMPTS = 60
NATS_RECONNECT_WAIT = 1


def _import_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise ConfigError("a nats:// broker needs nats-py: pip install 'iogate[nats]'") from None


class JetStreamDispatcher(BrokerDispatcher):
    """Chunks on a NATS JetStream work-queue stream (nats-py).

    ``open`` creates the stream ``stream`` (retention ``workqueue``, file
    storage, subject ``<stream>.chunks``) unless it exists, and checks that
    an existing one is a work queue on that subject. ``publish`` sets
    ``Nats-Msg-Id`` to the task's message id, so the same chunk published
    twice within the stream's duplicate window (2 minutes) is stored once,
    and waits for JetStream's ack of each message.

    Every worker shares ONE durable pull consumer, ``<stream>-workers``
    (explicit acks, ``ack_wait``): a message not acknowledged within
    ``ack_wait`` seconds goes to another worker, which is how a killed or
    vanished worker's chunks come back. While a handler runs, its message
    is marked in progress every ``ack_wait / 3`` seconds, so a long chunk
    is not redelivered. A handler that raises has its message nak'ed with a
    full-jitter backoff delay (at most 30 s); a message that is not a chunk
    task is terminated with a log line. All workers should use the same
    ``ack_wait``: the last one to start sets the consumer's.

    A single JetStream server acknowledges a message once written, and
    syncs its file store to disk every 2 minutes: an OS crash or power loss
    can lose acknowledged messages unless the stream is replicated (R3) or
    the server syncs always. After a restart, the job store's unfinished
    chunks can be published again (``store.unfinished()``).
    """

    broker = "NATS"

    def __init__(
        self,
        url: str,
        *,
        stream: str,
        ack_wait: float,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    ) -> None:
        _import_nats()
        check_name("stream", stream)
        if ack_wait <= 0:
            raise ConfigError(f"ack_wait must be positive, got {ack_wait}")
        self.url = url
        self.stream = stream
        self.subject = f"{stream}.chunks"
        self.durable = f"{stream}-workers"
        self.ack_wait = ack_wait
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.retry_backoff = retry_backoff
        self._shown_url = redact_url(url)
        self._state = State.UNOPENED
        self._nc: nats.aio.client.Client | None = None
        self._js: nats.js.JetStreamContext | None = None
        self._reconnecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<JetStreamDispatcher {self._shown_url} stream={self.stream!r} {self._state.value}>"

    # -- lifecycle

    async def open(self) -> None:
        """Connect and make sure the stream exists; JobError when it cannot."""
        if self._state is State.OPEN:
            return
        if self._state is State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        nc = await self._connect()
        try:
            self._js = nc.jetstream(timeout=self.publish_timeout)
            await self._ensure_stream(self._js)
        except BaseException:
            await close_quietly(nc)
            raise
        self._nc = nc
        self._state = State.OPEN

    async def aclose(self) -> None:
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await close_quietly(nc)

    async def _connect(self) -> nats.aio.client.Client:
        import nats.aio.client
        import nats.errors

        nc = nats.aio.client.Client()
        connected = False

        async def on_error(exc: Exception) -> None:
            # A failed first connect ends in a JobError; failed reconnects in
            # a warning from on_disconnected, then one from consume/publish.
            if connected and not nc.is_reconnecting:
                logger.warning("NATS %s: %r", self._shown_url, exc)

        async def on_disconnected() -> None:
            if self._state is State.OPEN:
                logger.warning("NATS %s: disconnected, reconnecting", self._shown_url)

        async def on_reconnected() -> None:
            logger.warning("NATS %s: reconnected", self._shown_url)

        try:
            # nats-py retries a refused first connect for ~2 minutes by
            # default; the whole connect gets ``connect_timeout`` instead.
            async with asyncio.timeout(self.connect_timeout):
                await nc.connect(
                    self.url,
                    connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                    allow_reconnect=True,
                    max_reconnect_attempts=NATS_RECONNECT_ATTEMPTS,
                    reconnect_time_wait=NATS_RECONNECT_WAIT,
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            cause = nc.last_error or exc
            await close_quietly(nc)
            detail = f"{cause}" if str(cause) else type(cause).__name__
            if isinstance(exc, TimeoutError) and cause is exc:
                detail = f"no answer within {self.connect_timeout:g} s"
            raise self._error(f"cannot reach NATS at {self._shown_url}: {detail}") from exc
        connected = True
        return nc

    async def _ensure_stream(self, js: nats.js.JetStreamContext) -> None:
        import nats.errors
        import nats.js.errors
        from nats.js import api

        config = api.StreamConfig(
            name=self.stream,
            subjects=[self.subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        )
        try:
            try:
                await js.add_stream(config)
                return
            except nats.js.errors.BadRequestError:
                info = await js.stream_info(self.stream)  # it exists, otherwise
        except nats.errors.NoRespondersError as exc:
            raise self._error(
                f"NATS at {self._shown_url} has no JetStream (start nats-server with -js)"
            ) from exc
        except nats.errors.Error as exc:
            raise self._error(
                f"NATS at {self._shown_url}: stream {self.stream!r}: {_nats_text(exc)}"
            ) from exc
        subjects = info.config.subjects or []
        covered = (
            self.subject in subjects
            or f"{self.stream}.>" in subjects
            or f"{self.stream}.*" in subjects
        )
        if info.config.retention is not api.RetentionPolicy.WORK_QUEUE or not covered:
            raise JobError(
                f"NATS stream {self.stream!r} exists but is not a work queue on "
                f"{self.subject!r} (retention {info.config.retention}, subjects {subjects}); "
                "delete it or choose another [jobs] queue"
            )

    async def _ensure_consumer(self, js: nats.js.JetStreamContext) -> None:
        import nats.errors
        from nats.js import api

        config = api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=MAX_ACK_PENDING,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        try:
            await js.add_consumer(self.stream, config)  # creates, or updates ack_wait
        except nats.errors.Error as exc:
            raise self._error(
                f"NATS at {self._shown_url}: consumer {self.durable!r} on stream "
                f"{self.stream!r}: {_nats_text(exc)}"
            ) from exc

    # -- publish

    async def publish(self, tasks: Sequence[ChunkTask]) -> None:
        js = await self._jetstream()
        try:
            await publish_all(tasks, lambda task: self._publish_one(js, task))
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _publish_one(self, js: nats.js.JetStreamContext, task: ChunkTask) -> None:
        import nats.errors
        import nats.js.errors

        try:
            await js.publish(
                self.subject,
                task.encode(),
                timeout=self.publish_timeout,
                headers={"Nats-Msg-Id": task.message_id},
            )
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            raise self._error(
                f"NATS at {self._shown_url}: no stream takes {self.subject!r} "
                f"(was stream {self.stream!r} deleted?)"
            ) from exc
        except nats.errors.TimeoutError as exc:
            raise self._error(
                f"NATS at {self._shown_url}: no JetStream ack within "
                f"{self.publish_timeout:g} s for job {task.job_id} chunk {task.chunk}"
            ) from exc
        except nats.errors.Error as exc:
            raise self._error(
                f"NATS at {self._shown_url}: publish failed: {_nats_text(exc)}"
            ) from exc

    # -- consume

    async def consume(self, handler: ChunkHandler, *, prefetch: int) -> None:
        import nats.errors

        check_prefetch(prefetch)
        js = await self._jetstream()
        await self._ensure_consumer(js)
        try:
            sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except nats.errors.Error as exc:
            raise self._error(f"NATS at {self._shown_url}: cannot subscribe: {exc!r}") from exc
        running: set[asyncio.Task[None]] = set()
        try:
            while self._state is State.OPEN:
                if len(running) >= prefetch:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await sub.fetch(prefetch - len(running), timeout=FETCH_WAIT)
                except (nats.errors.TimeoutError, TimeoutError):
                    # Nothing to do, or a reconnect under way. nats-py ends an
                    # expired pull with either kind of TimeoutError.
                    continue
                except nats.errors.Error as exc:
                    if self._state is not State.OPEN:
                        return
                    raise self._error(
                        f"NATS at {self._shown_url}: consuming {self.durable!r} failed: "
                        f"{_nats_text(exc)}"
                    ) from exc
                for message in messages:
                    runner = asyncio.create_task(self._run(message, handler))
                    running.add(runner)
                    runner.add_done_callback(running.discard)
        finally:
            await stop_all(running)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await sub.unsubscribe()

    async def _run(self, message: nats.aio.msg.Msg, handler: ChunkHandler) -> None:
        try:
            task = ChunkTask.decode(message.data)
        except InvalidRequestError:
            logger.error(
                "NATS stream %s: message %d is not a chunk task, terminated: %r",
                self.stream,
                message.metadata.sequence.stream if message.metadata.sequence else -1,
                message.data[:200],
            )
            await self._settle(message.term())
            return
        keep_alive = asyncio.create_task(self._keep_alive(message))
        try:
            await handler(task)
        except asyncio.CancelledError:
            # Stopping: give it back now rather than after ack_wait.
            await self._settle(message.nak())
            raise
        except Exception as exc:
            delivered = message.metadata.num_delivered or 1
            delay = retry_wait(delivered, self.retry_backoff)
            logger.warning(
                "job %s chunk %d failed (delivery %d), redelivered in %.1f s: %r",
                task.job_id,
                task.chunk,
                delivered,
                delay,
                exc,
            )
            await self._settle(message.nak(delay=delay))
        else:
            await finish(self._settle(message.ack_sync(timeout=self.publish_timeout), task))
        finally:
            keep_alive.cancel()

    async def _keep_alive(self, message: nats.aio.msg.Msg) -> None:
        """Reset the message's ack_wait clock while its handler runs."""
        interval = self.ack_wait / 3
        while True:  # ends when the handler does (cancelled)
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # a reconnect: the next one may pass
                await message.in_progress()

    async def _jetstream(self) -> nats.js.JetStreamContext:
        """The JetStream context; a new connection once nats-py gave up reconnecting."""
        if self._state is not State.OPEN:
            raise ClosedError(f"dispatcher is {self._state.value}; call open() first")
        async with self._reconnecting:
            if self._nc is None or self._js is None or self._nc.is_closed:
                logger.warning("NATS %s: connection closed, connecting again", self._shown_url)
                old, nc = self._nc, await self._connect()
                self._nc, self._js = nc, nc.jetstream(timeout=self.publish_timeout)
                if old is not None:
                    await close_quietly(old)
            return self._js


def _nats_text(exc: BaseException) -> str:
    """nats-py's API errors print as ``BadRequestError()``; their fields say more."""
    description = getattr(exc, "description", None)
    if description:
        code = getattr(exc, "err_code", None)
        return f"{description} (error {code})" if code else str(description)
    return str(exc) or type(exc).__name__
