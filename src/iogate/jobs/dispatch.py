"""Chunk messages from the gateway to whoever runs them: in-process, NATS JetStream, RabbitMQ.

Every :class:`~iogate.jobs.interfaces.Dispatcher` here delivers at least once:
a message is acknowledged only after its handler returned, so a chunk whose
runner died is delivered again, and a handler that raises has its chunk
retried after a bounded, jittered backoff. Handlers must therefore be safe to
run twice for the same chunk (the runner re-runs only operations without a
stored result).

- :class:`InProcessDispatcher`: no broker; chunks run in the process that
  published them (the embedded default).
- :class:`JetStreamDispatcher`: NATS JetStream (nats-py, ``iogate[nats]``),
  the recommended broker (bench/brokers.py): deduplication by message id and
  a redelivery time (``ack_wait``) that does not depend on TCP noticing a
  dead peer.
- :class:`RabbitMQDispatcher`: a RabbitMQ quorum queue (aio-pika,
  ``iogate[rabbitmq]``), for sites that already run RabbitMQ.

Every connect and publish has a timeout; a broker that refuses, never
answers, or stops answering yields :class:`~iogate.jobs.model.JobError`
naming the broker without its password. ``consume`` runs until it is
cancelled or the dispatcher is closed; chunks still running then are
cancelled and handed back to the broker unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from iogate.core.errors import ClosedError, ConfigError, InvalidRequestError
from iogate.core.redact import redact_text, redact_url, url_password
from iogate.jobs.interfaces import ChunkHandler, Dispatcher
from iogate.jobs.model import ChunkTask, JobError
from iogate.resilience.retry import backoff_delay

if TYPE_CHECKING:
    import aio_pika.abc
    import nats.aio.client
    import nats.aio.msg
    import nats.js

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_RETRY_BACKOFF",
    "MAX_HANDLER_FAILURES",
    "InProcessDispatcher",
    "JetStreamDispatcher",
    "RabbitMQDispatcher",
    "open_dispatcher",
]

logger = logging.getLogger("iogate.jobs.dispatch")

DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds for a whole connect, retries included
DEFAULT_PUBLISH_TIMEOUT = 5.0  # seconds for the broker to confirm one message
DEFAULT_RETRY_BACKOFF = 1.0  # seconds: ceiling of the first retry's full-jitter wait
RETRY_BACKOFF_MAX = 30.0  # seconds: ceiling of any retry's wait
MAX_HANDLER_FAILURES = 5  # in-process only: then the chunk waits for a restart
PUBLISH_WINDOW = 64  # publishes awaiting their broker confirmation at once
# JetStream: messages delivered and not yet acknowledged, summed over every
# worker (each holds at most its ``prefetch``); past it the server pauses.
MAX_ACK_PENDING = 1000
FETCH_WAIT = 2.0  # seconds one JetStream pull request waits for messages
# nats-py after a connection drops: attempts 1 s apart (then consume fails).
NATS_RECONNECT_ATTEMPTS = 60
NATS_RECONNECT_WAIT = 1
CLOSE_TIMEOUT = 2.0  # seconds for a goodbye to a broker that may be gone


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def open_dispatcher(
    url: str, *, queue: str, ack_wait: float, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> Dispatcher:
    """The dispatcher for ``[jobs] broker`` (not opened yet).

    ``""``: :class:`InProcessDispatcher`; ``nats://HOST:PORT``:
    :class:`JetStreamDispatcher` on stream ``queue``;
    ``amqp://USER:PASS@HOST:PORT/`` (or ``amqps://``):
    :class:`RabbitMQDispatcher` on queue ``queue``.
    """
    if not url:
        return InProcessDispatcher()
    if url.startswith("nats://"):
        return JetStreamDispatcher(
            url, stream=queue, ack_wait=ack_wait, connect_timeout=connect_timeout
        )
    if url.startswith(("amqp://", "amqps://")):
        return RabbitMQDispatcher(
            url, queue=queue, ack_wait=ack_wait, connect_timeout=connect_timeout
        )
    raise ConfigError(
        f"jobs.broker: {redact_url(url)!r} is neither empty (in-process), nats://... nor amqp://..."
    )


def retry_wait(failures: int, backoff: float) -> float:
    """Full-jitter wait before retrying a chunk whose handler failed ``failures`` times."""
    return backoff_delay(max(1, failures), initial=backoff, maximum=RETRY_BACKOFF_MAX)


def _check_prefetch(prefetch: int) -> None:
    if prefetch < 1:
        raise ConfigError(f"prefetch must be at least 1, got {prefetch}")


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"{kind} {name!r}: use 1 to 64 letters, digits, '_' or '-'")


async def _publish_all(
    tasks: Sequence[ChunkTask], publish: Callable[[ChunkTask], Coroutine[Any, Any, None]]
) -> None:
    """``publish`` each task, ``PUBLISH_WINDOW`` at a time; the first failure wins."""
    for start in range(0, len(tasks), PUBLISH_WINDOW):
        async with asyncio.TaskGroup() as group:
            for task in tasks[start : start + PUBLISH_WINDOW]:
                group.create_task(publish(task))


def _first_error(exc: BaseException) -> BaseException:
    """The first leaf of a TaskGroup's ExceptionGroup (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _finish(settle: Coroutine[Any, Any, None]) -> None:
    """Run ``settle`` to its end even when cancelled meanwhile (it has its own
    timeout): a chunk whose handler returned is acknowledged, not redone."""
    task = asyncio.ensure_future(settle)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def _stop_all(running: set[asyncio.Task[None]]) -> None:
    """Cancel the handlers still running and wait until each has wound down."""
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(set(running))


# --------------------------------------------------------------------------- in-process


class InProcessDispatcher:
    """Chunks on an in-memory queue, run by ``consume`` in this same process.

    The embedded default (``[jobs] broker = ""``). Nothing here is durable:
    durability comes from the job store, whose unfinished chunks the caller
    publishes again at start-up (``store.unfinished()``), which is what
    :class:`~iogate.jobs.service.JobService` does. A task already queued,
    running or waiting for a retry is not queued twice. A handler that
    raises has its chunk queued again after a full-jitter backoff; after
    ``max_failures`` failures the chunk is dropped with an error log (the
    store still lists it unfinished, so the next start-up resumes it).
    """

    def __init__(
        self,
        *,
        max_failures: int = MAX_HANDLER_FAILURES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    ) -> None:
        if max_failures < 1:
            raise ConfigError(f"max_failures must be at least 1, got {max_failures}")
        self.max_failures = max_failures
        self.retry_backoff = retry_backoff
        self._state = _State.UNOPENED
        self._queue: asyncio.Queue[ChunkTask | None] = asyncio.Queue()
        self._failures: dict[str, int] = {}  # every task queued, running or waiting
        self._retries: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        return (
            f"<InProcessDispatcher {self._state.value}: {self._queue.qsize()} queued, "
            f"{self.unfinished} unfinished>"
        )

    @property
    def unfinished(self) -> int:
        """Tasks queued, running or waiting for a retry."""
        return len(self._failures)

    async def __aenter__(self) -> InProcessDispatcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        self._state = _State.OPEN

    async def aclose(self) -> None:
        """Forget every queued task and stop every ``consume``; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        self._failures.clear()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)  # each consumer passes it on and returns

    async def publish(self, tasks: Sequence[ChunkTask]) -> None:
        self._require_open()
        for task in tasks:
            if task.message_id not in self._failures:
                self._failures[task.message_id] = 0
                self._queue.put_nowait(task)

    async def consume(self, handler: ChunkHandler, *, prefetch: int) -> None:
        self._require_open()
        _check_prefetch(prefetch)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(running) >= prefetch:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                task = await self._queue.get()
                if task is None:
                    self._queue.put_nowait(None)
                    return
                runner = asyncio.create_task(self._run(task, handler))
                running.add(runner)
                runner.add_done_callback(running.discard)
        finally:
            await _stop_all(running)

    async def _run(self, task: ChunkTask, handler: ChunkHandler) -> None:
        try:
            await handler(task)
        except asyncio.CancelledError:
            if self._state is _State.OPEN:  # consume was cancelled: keep it for the next one
                self._queue.put_nowait(task)
            raise
        except Exception as exc:
            self._failed(task, exc)
        else:
            self._failures.pop(task.message_id, None)

    def _failed(self, task: ChunkTask, exc: Exception) -> None:
        if self._state is not _State.OPEN:
            return
        failures = self._failures.get(task.message_id, 0) + 1
        if failures >= self.max_failures:
            self._failures.pop(task.message_id, None)
            logger.error(
                "job %s chunk %d failed %d times, dropped until the next start-up: %r",
                task.job_id,
                task.chunk,
                failures,
                exc,
            )
            return
        self._failures[task.message_id] = failures
        delay = retry_wait(failures, self.retry_backoff)
        logger.warning(
            "job %s chunk %d failed (%d of %d), retrying in %.1f s: %r",
            task.job_id,
            task.chunk,
            failures,
            self.max_failures,
            delay,
            exc,
        )
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def requeue() -> None:
            assert handle is not None
            self._retries.discard(handle)
            if self._state is _State.OPEN:
                self._queue.put_nowait(task)

        handle = loop.call_later(delay, requeue)
        self._retries.add(handle)

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise ClosedError(f"dispatcher is {self._state.value}; call open() first")


# --------------------------------------------------------------------------- JetStream


def _import_nats() -> None:
    try:
        import nats  # noqa: F401
    except ImportError:
        raise ConfigError("a nats:// broker needs nats-py: pip install 'iogate[nats]'") from None


class JetStreamDispatcher:
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
        _check_name("stream", stream)
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
        self._state = _State.UNOPENED
        self._nc: nats.aio.client.Client | None = None
        self._js: nats.js.JetStreamContext | None = None
        self._reconnecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<JetStreamDispatcher {self._shown_url} stream={self.stream!r} {self._state.value}>"

    async def __aenter__(self) -> JetStreamDispatcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- lifecycle

    async def open(self) -> None:
        """Connect and make sure the stream exists; JobError when it cannot."""
        if self._state is _State.OPEN:
            return
        if self._state is _State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        nc = await self._connect()
        try:
            self._js = nc.jetstream(timeout=self.publish_timeout)
            await self._ensure_stream(self._js)
        except BaseException:
            await self._close_client(nc)
            raise
        self._nc = nc
        self._state = _State.OPEN

    async def aclose(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await self._close_client(nc)

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
            if self._state is _State.OPEN:
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
            await self._close_client(nc)
            detail = f"{cause}" if str(cause) else type(cause).__name__
            if isinstance(exc, TimeoutError) and cause is exc:
                detail = f"no answer within {self.connect_timeout:g} s"
            raise self._error(f"cannot reach NATS at {self._shown_url}: {detail}") from exc
        connected = True
        return nc

    async def _close_client(self, nc: nats.aio.client.Client) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await nc.close()

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
            await _publish_all(tasks, lambda task: self._publish_one(js, task))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

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

        _check_prefetch(prefetch)
        js = await self._jetstream()
        await self._ensure_consumer(js)
        try:
            sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except nats.errors.Error as exc:
            raise self._error(f"NATS at {self._shown_url}: cannot subscribe: {exc!r}") from exc
        running: set[asyncio.Task[None]] = set()
        try:
            while self._state is _State.OPEN:
                if len(running) >= prefetch:
                    await asyncio.wait(set(running), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    messages = await sub.fetch(prefetch - len(running), timeout=FETCH_WAIT)
                except nats.errors.TimeoutError:
                    continue  # nothing to do, or a reconnect under way
                except nats.errors.Error as exc:
                    if self._state is not _State.OPEN:
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
            await _stop_all(running)
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
            await _finish(self._settle(message.ack_sync(timeout=self.publish_timeout), task))
        finally:
            keep_alive.cancel()

    async def _keep_alive(self, message: nats.aio.msg.Msg) -> None:
        """Reset the message's ack_wait clock while its handler runs."""
        interval = self.ack_wait / 3
        while True:  # ends when the handler does (cancelled)
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):  # a reconnect: the next one may pass
                await message.in_progress()

    async def _settle(self, reply: Awaitable[Any], task: ChunkTask | None = None) -> None:
        """Send an ack/nak/term; a lost one only means a redelivery."""
        try:
            async with asyncio.timeout(self.publish_timeout):
                await reply
        except Exception as exc:
            what = f"job {task.job_id} chunk {task.chunk}" if task else "a message"
            logger.warning(
                "NATS %s: could not settle %s (it will be redelivered): %r",
                self._shown_url,
                what,
                exc,
            )

    async def _jetstream(self) -> nats.js.JetStreamContext:
        """The JetStream context; a new connection once nats-py gave up reconnecting."""
        if self._state is not _State.OPEN:
            raise ClosedError(f"dispatcher is {self._state.value}; call open() first")
        async with self._reconnecting:
            if self._nc is None or self._js is None or self._nc.is_closed:
                logger.warning("NATS %s: connection closed, connecting again", self._shown_url)
                old, nc = self._nc, await self._connect()
                self._nc, self._js = nc, nc.jetstream(timeout=self.publish_timeout)
                if old is not None:
                    await self._close_client(old)
            return self._js

    def _error(self, message: str) -> JobError:
        return JobError(redact_text(message, [url_password(self.url) or ""]))


def _nats_text(exc: BaseException) -> str:
    """nats-py's API errors print as ``BadRequestError()``; their fields say more."""
    description = getattr(exc, "description", None)
    if description:
        code = getattr(exc, "err_code", None)
        return f"{description} (error {code})" if code else str(description)
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------- RabbitMQ


def _import_aio_pika() -> None:
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        raise ConfigError(
            "an amqp:// broker needs aio-pika: pip install 'iogate[rabbitmq]'"
        ) from None


class RabbitMQDispatcher:
    """Chunks on a RabbitMQ quorum queue (aio-pika).

    ``open`` declares the durable quorum queue ``queue`` (a quorum queue
    works on a single node too, and is replicated on a cluster).
    ``publish`` sends persistent messages (message id set) with publisher
    confirms: it returns once RabbitMQ has written every message. RabbitMQ
    has no deduplication: the same chunk published twice is delivered
    twice, which costs a second look at the chunk, nothing more.

    ``consume`` takes up to ``prefetch`` messages at once and acknowledges
    each after its handler returned. A handler that raises has its message
    held for a full-jitter backoff (at most 30 s), then rejected back onto
    the queue. A worker's unacknowledged messages return to the queue as
    soon as RabbitMQ sees its connection close; a worker whose machine
    vanishes without closing it is noticed by the AMQP heartbeat, set to
    ``max(5, ack_wait / 3)`` seconds (aio-pika's default is 60). RabbitMQ
    drops such a connection after about three heartbeat intervals (15 s
    measured with 5 s), so its chunks come back after about
    ``max(15, ack_wait)`` seconds, as JetStream's would after ``ack_wait``.

    RabbitMQ closes the channel of a consumer that holds a message longer
    than its ``consumer_timeout`` (30 minutes by default): a chunk must run
    faster than that, or raise the broker's ``consumer_timeout``. ``consume``
    then fails with JobError and its chunks return to the queue.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: str,
        ack_wait: float,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    ) -> None:
        _import_aio_pika()
        _check_name("queue", queue)
        if ack_wait <= 0:
            raise ConfigError(f"ack_wait must be positive, got {ack_wait}")
        self.url = url
        self.queue = queue
        self.ack_wait = ack_wait
        self.heartbeat = max(5, math.ceil(ack_wait / 3))
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self.retry_backoff = retry_backoff
        self._shown_url = redact_url(url)
        self._state = _State.UNOPENED
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._reconnecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<RabbitMQDispatcher {self._shown_url} queue={self.queue!r} {self._state.value}>"

    async def __aenter__(self) -> RabbitMQDispatcher:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- lifecycle

    async def open(self) -> None:
        """Connect and declare the queue; JobError when it cannot."""
        if self._state is _State.OPEN:
            return
        if self._state is _State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        await self._connect()
        self._state = _State.OPEN

    async def aclose(self) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await _close_quietly(connection)

    async def _connect(self) -> aio_pika.abc.AbstractChannel:
        """A fresh connection and publishing channel, the queue declared."""
        import aio_pika

        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = await aio_pika.connect(
                    self.url, timeout=self.connect_timeout, heartbeat=self.heartbeat
                )
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            detail = str(exc) or f"no answer within {self.connect_timeout:g} s"
            raise self._error(f"cannot reach RabbitMQ at {self._shown_url}: {detail}") from exc
        try:
            channel = await self._declare(connection)
        except BaseException:
            await _close_quietly(connection)
            raise
        old = self._connection
        self._connection, self._channel = connection, channel
        if old is not None:
            await _close_quietly(old)
        return channel

    async def _declare(
        self, connection: aio_pika.abc.AbstractConnection
    ) -> aio_pika.abc.AbstractChannel:
        import aio_pika

        try:
            async with asyncio.timeout(self.publish_timeout):
                # on_return_raises: a message no queue took fails its publish.
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await channel.declare_queue(
                    self.queue, durable=True, arguments={"x-queue-type": "quorum"}
                )
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise JobError(
                f"RabbitMQ queue {self.queue!r} exists but is not a durable quorum queue "
                f"({exc}); delete it or choose another [jobs] queue"
            ) from exc
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            # RuntimeError: aiormq's "connection closed" on a connection that
            # aio-pika does not know is closed yet.
            detail = str(exc) or f"no answer within {self.publish_timeout:g} s"
            raise self._error(
                f"RabbitMQ at {self._shown_url}: cannot declare queue {self.queue!r}: {detail}"
            ) from exc
        return channel

    async def _publishing_channel(self) -> aio_pika.abc.AbstractChannel:
        """The publishing channel, reconnected if the connection was lost."""
        if self._state is not _State.OPEN:
            raise ClosedError(f"dispatcher is {self._state.value}; call open() first")
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel
        async with self._reconnecting:
            channel, connection = self._channel, self._connection
            if channel is not None and not channel.is_closed:
                return channel
            if connection is not None and not connection.is_closed:
                # Only the channel went (a channel error): consumers on the
                # connection keep going. If the connection went too, reconnect.
                with contextlib.suppress(JobError):
                    self._channel = await self._declare(connection)
                    return self._channel
            logger.warning("RabbitMQ %s: connection lost, reconnecting", self._shown_url)
            return await self._connect()

    # -- publish

    async def publish(self, tasks: Sequence[ChunkTask]) -> None:
        channel = await self._publishing_channel()
        try:
            await _publish_all(tasks, lambda task: self._publish_one(channel, task))
        except BaseExceptionGroup as group:
            raise _first_error(group) from None

    async def _publish_one(self, channel: aio_pika.abc.AbstractChannel, task: ChunkTask) -> None:
        import aio_pika

        message = aio_pika.Message(
            task.encode(),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=task.message_id,
            content_type="application/json",
        )
        try:
            # Confirms on, on_return_raises: returns once RabbitMQ acked it.
            await channel.default_exchange.publish(
                message, routing_key=self.queue, timeout=self.publish_timeout
            )
        except aio_pika.exceptions.PublishError as exc:
            raise self._error(
                f"RabbitMQ at {self._shown_url}: no queue took job {task.job_id} chunk "
                f"{task.chunk} (was queue {self.queue!r} deleted?)"
            ) from exc
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            detail = str(exc) or f"no confirmation within {self.publish_timeout:g} s"
            raise self._error(
                f"RabbitMQ at {self._shown_url}: publishing job {task.job_id} chunk "
                f"{task.chunk} failed: {detail}"
            ) from exc

    # -- consume

    async def consume(self, handler: ChunkHandler, *, prefetch: int) -> None:
        import aio_pika

        _check_prefetch(prefetch)
        await self._publishing_channel()  # open, and connected
        connection = self._connection
        assert connection is not None
        lost = asyncio.Event()
        running: set[asyncio.Task[None]] = set()
        stopping = False

        def on_close(*_: object) -> None:
            lost.set()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if stopping:  # left unacknowledged: the channel's close hands it back
                return
            runner = asyncio.create_task(self._run(message, handler))
            running.add(runner)
            runner.add_done_callback(running.discard)

        channel: aio_pika.abc.AbstractChannel | None = None
        try:
            async with asyncio.timeout(self.publish_timeout):
                channel = await connection.channel()  # its own: qos is per channel
                await channel.set_qos(prefetch_count=prefetch)
                queue = await channel.get_queue(self.queue, ensure=False)
                channel.close_callbacks.add(on_close)
                await queue.consume(on_message)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            if channel is not None:
                await _close_quietly(channel)
            detail = str(exc) or f"no answer within {self.publish_timeout:g} s"
            raise self._error(
                f"RabbitMQ at {self._shown_url}: cannot consume {self.queue!r}: {detail}"
            ) from exc
        try:
            await lost.wait()
            if self._state is not _State.OPEN:
                return
            raise self._error(
                f"RabbitMQ at {self._shown_url}: lost the connection or channel consuming "
                f"{self.queue!r} (its unacknowledged chunks go back to the queue)"
            )
        finally:
            stopping = True
            channel.close_callbacks.discard(on_close)
            await _stop_all(running)
            # Closing the channel hands every unacknowledged message back.
            await _close_quietly(channel)

    async def _run(
        self, message: aio_pika.abc.AbstractIncomingMessage, handler: ChunkHandler
    ) -> None:
        try:
            task = ChunkTask.decode(message.body)
        except InvalidRequestError:
            logger.error(
                "RabbitMQ queue %s: message %r is not a chunk task, dropped: %r",
                self.queue,
                message.message_id,
                message.body[:200],
            )
            await self._settle(message.reject(requeue=False))
            return
        try:
            await handler(task)
        except asyncio.CancelledError:
            raise  # stopping: the channel's close hands it back
        except Exception as exc:
            delivered = _delivery_count(message) + 1
            delay = retry_wait(delivered, self.retry_backoff)
            logger.warning(
                "job %s chunk %d failed (delivery %d), back on the queue in %.1f s: %r",
                task.job_id,
                task.chunk,
                delivered,
                delay,
                exc,
            )
            await asyncio.sleep(delay)  # holding it is the backoff: RabbitMQ has no delayed nack
            await self._settle(message.reject(requeue=True), task)
        else:
            await _finish(self._settle(message.ack(), task))

    async def _settle(self, reply: Awaitable[Any], task: ChunkTask | None = None) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout):
                await reply
        except Exception as exc:
            what = f"job {task.job_id} chunk {task.chunk}" if task else "a message"
            logger.warning(
                "RabbitMQ %s: could not settle %s (it will be redelivered): %r",
                self._shown_url,
                what,
                exc,
            )

    def _error(self, message: str) -> JobError:
        return JobError(redact_text(message, [url_password(self.url) or ""]))


def _delivery_count(message: aio_pika.abc.AbstractIncomingMessage) -> int:
    """Earlier deliveries of a quorum queue message (its ``x-delivery-count``)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


async def _close_quietly(closable: Any) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await closable.close()
