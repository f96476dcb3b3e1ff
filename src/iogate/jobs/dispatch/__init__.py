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

Each lives in a module of its own (:mod:`.inprocess`, :mod:`.jetstream`,
:mod:`.rabbitmq`) with what they share in :mod:`.common`; a broker's
driver is imported only when its dispatcher is created, never by this
package.

Every connect and publish has a timeout; a broker that refuses, never
answers, or stops answering yields :class:`~iogate.jobs.model.JobError`
naming the broker without its password. ``consume`` runs until it is
cancelled or the dispatcher is closed; chunks still running then are
cancelled and handed back to the broker unacknowledged.
"""

from __future__ import annotations

from iogate.core.errors import ConfigError
from iogate.core.redact import redact_url
from iogate.jobs.dispatch.common import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RETRY_BACKOFF,
)
from iogate.jobs.dispatch.inprocess import MAX_HANDLER_FAILURES, InProcessDispatcher
from iogate.jobs.dispatch.jetstream import JetStreamDispatcher
from iogate.jobs.dispatch.rabbitmq import RabbitMQDispatcher
from iogate.jobs.interfaces import Dispatcher

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
