"""The RabbitMQ dispatcher: a quorum queue (aio-pika, ``iogate[rabbitmq]``).

For sites that already run RabbitMQ; JetStream is the recommended broker.
aio-pika is imported only when a :class:`RabbitMQDispatcher` is created or
used, never when this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from iogate.core.errors import ClosedError, ConfigError, InvalidRequestError
from iogate.core.redact import redact_url
from iogate.jobs.dispatch.common import (
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
    import aio_pika.abc

__all__ = ["RabbitMQDispatcher"]


def _import_aio_pika() -> None:
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        raise ConfigError(
            "an amqp:// broker needs aio-pika: pip install 'iogate[rabbitmq]'"
        ) from None


class RabbitMQDispatcher(BrokerDispatcher):
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

    broker = "RabbitMQ"

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
        check_name("queue", queue)
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
        self._state = State.UNOPENED
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._reconnecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<RabbitMQDispatcher {self._shown_url} queue={self.queue!r} {self._state.value}>"

    # -- lifecycle

    async def open(self) -> None:
        """Connect and declare the queue; JobError when it cannot."""
        if self._state is State.OPEN:
            return
        if self._state is State.CLOSED:
            raise ClosedError("this dispatcher is closed; create a new one")
        await self._connect()
        self._state = State.OPEN

    async def aclose(self) -> None:
        if self._state is State.CLOSED:
            return
        self._state = State.CLOSED
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            await close_quietly(connection)

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
            await close_quietly(connection)
            raise
        old = self._connection
        self._connection, self._channel = connection, channel
        if old is not None:
            await close_quietly(old)
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
        if self._state is not State.OPEN:
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
            await publish_all(tasks, lambda task: self._publish_one(channel, task))
        except BaseExceptionGroup as group:
            raise first_error(group) from None

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

        check_prefetch(prefetch)
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
                await close_quietly(channel)
            detail = str(exc) or f"no answer within {self.publish_timeout:g} s"
            raise self._error(
                f"RabbitMQ at {self._shown_url}: cannot consume {self.queue!r}: {detail}"
            ) from exc
        try:
            await lost.wait()
            if self._state is not State.OPEN:
                return
            raise self._error(
                f"RabbitMQ at {self._shown_url}: lost the connection or channel consuming "
                f"{self.queue!r} (its unacknowledged chunks go back to the queue)"
            )
        finally:
            stopping = True
            channel.close_callbacks.discard(on_close)
            await stop_all(running)
            # Closing the channel hands every unacknowledged message back.
            await close_quietly(channel)

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
            await finish(self._settle(message.ack(), task))


def _delivery_count(message: aio_pika.abc.AbstractIncomingMessage) -> int:
    """Earlier deliveries of a quorum queue message (its ``x-delivery-count``)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0
