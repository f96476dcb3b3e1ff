"""The brokers the job tests use, and how they clean up after themselves."""

from __future__ import annotations

import contextlib
import os

NATS_URL = os.environ.get("IOGATE_TEST_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("IOGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
BROKERS = {"nats": (NATS_URL, 4222), "amqp": (AMQP_URL, 5672)}


async def drop_queue(kind: str, queue: str, url: str | None = None) -> None:
    """Delete the JetStream stream or RabbitMQ queue ``queue`` (gone already: fine)."""
    url = url or BROKERS[kind][0]
    if kind == "nats":
        import nats

        client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
        try:
            with contextlib.suppress(Exception):  # already gone
                await client.jetstream().delete_stream(queue)
        finally:
            await client.close()
    else:
        import aio_pika

        connection = await aio_pika.connect(url, timeout=2)
        try:
            with contextlib.suppress(Exception):  # already gone
                channel = await connection.channel()
                await channel.queue_delete(queue)
        finally:
            await connection.close()
