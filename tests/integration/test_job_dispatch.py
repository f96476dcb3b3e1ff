"""Chunk dispatch against the real brokers: in-process, NATS JetStream, RabbitMQ.

Each test gets its own stream / queue (``iogate-test-<uuid>``), deleted at
the end. The redelivery test SIGKILLs a consumer process
(``_job_consumer.py``) that holds chunks without acknowledging them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import nats
import nats.js.errors
import pytest
from nats.js import api as js_api

from iogate.core.errors import ClosedError
from iogate.jobs.dispatch import (
    InProcessDispatcher,
    JetStreamDispatcher,
    RabbitMQDispatcher,
    open_dispatcher,
)
from iogate.jobs.interfaces import Dispatcher
from iogate.jobs.model import ChunkTask, JobError
from tests.conftest import poll, port_open, unavailable

NATS_URL = os.environ.get("IOGATE_TEST_NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("IOGATE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CONSUMER = str(Path(__file__).with_name("_job_consumer.py"))


def new_tasks(count: int) -> list[ChunkTask]:
    job_id = uuid.uuid4().hex
    return [ChunkTask(job_id=job_id, chunk=number) for number in range(count)]


class Broker:
    """One broker kind with a queue of its own: dispatchers on it, what it holds, cleanup."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = {"inprocess": "", "nats": NATS_URL, "amqp": AMQP_URL}[kind]
        self.queue = f"iogate-test-{uuid.uuid4().hex[:12]}"
        self.dispatchers: list[Dispatcher] = []

    def make(self, *, ack_wait: float = 5.0, retry_backoff: float = 0.05) -> Any:
        dispatcher: Dispatcher
        if self.kind == "inprocess":
            dispatcher = InProcessDispatcher(retry_backoff=retry_backoff)
        elif self.kind == "nats":
            dispatcher = JetStreamDispatcher(
                self.url, stream=self.queue, ack_wait=ack_wait, retry_backoff=retry_backoff
            )
        else:
            dispatcher = RabbitMQDispatcher(
                self.url, queue=self.queue, ack_wait=ack_wait, retry_backoff=retry_backoff
            )
        self.dispatchers.append(dispatcher)
        return dispatcher

    async def stored(self) -> int:
        """Messages the broker still holds: JetStream keeps a work-queue message
        until it is acked; RabbitMQ counts the ready ones (consumers closed)."""
        if self.kind == "inprocess":
            return sum(d.unfinished for d in self.dispatchers)  # type: ignore[attr-defined]
        if self.kind == "nats":
            nc = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
            try:
                info = await nc.jetstream(timeout=5).stream_info(self.queue)
                return int(info.state.messages)
            finally:
                await nc.close()
        async with await aio_pika.connect(self.url, timeout=5) as conn:
            queue = await (await conn.channel()).declare_queue(self.queue, passive=True)
            return int(queue.declaration_result.message_count or 0)

    async def consumer_info(self) -> js_api.ConsumerInfo:
        nc = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
        try:
            return await nc.jetstream(timeout=5).consumer_info(self.queue, f"{self.queue}-workers")
        finally:
            await nc.close()

    async def cleanup(self) -> None:
        for dispatcher in self.dispatchers:
            await dispatcher.aclose()
        if self.kind == "nats":
            nc = await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream(timeout=5).delete_stream(self.queue)
            await nc.close()
        elif self.kind == "amqp":
            async with await aio_pika.connect(self.url, timeout=5) as conn:
                await (await conn.channel()).queue_delete(self.queue)


@pytest.fixture(params=["inprocess", "nats", "amqp"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    kind: str = request.param
    if kind == "nats" and not port_open(NATS_URL, 4222):
        unavailable(f"no NATS at {NATS_URL}")
    if kind == "amqp" and not port_open(AMQP_URL, 5672):
        unavailable(f"no RabbitMQ at {AMQP_URL}")
    made = Broker(kind)
    try:
        yield made
    finally:
        await made.cleanup()


brokers = pytest.mark.parametrize("broker", ["nats", "amqp"], indirect=True)
jetstream = pytest.mark.parametrize("broker", ["nats"], indirect=True)


@contextlib.asynccontextmanager
async def consuming(
    dispatcher: Dispatcher, handler: Callable[[ChunkTask], Awaitable[None]], prefetch: int
) -> AsyncIterator[asyncio.Task[None]]:
    """``consume`` in the background; cancelled on exit (its failure re-raised)."""
    task = asyncio.create_task(dispatcher.consume(handler, prefetch=prefetch))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_each_task_consumed_exactly_once(broker: Broker) -> None:
    dispatcher = broker.make()
    await dispatcher.open()
    tasks = new_tasks(40)
    await dispatcher.publish(tasks[:25])  # before anyone consumes
    seen: list[str] = []

    async def handler(task: ChunkTask) -> None:
        seen.append(task.message_id)

    async with consuming(dispatcher, handler, 4), consuming(dispatcher, handler, 4):
        await dispatcher.publish(tasks[25:])  # while two consumers run
        assert await poll(lambda: len(seen) >= len(tasks), timeout=15)
    assert await broker.stored() == 0  # every one acknowledged
    assert Counter(seen) == {task.message_id: 1 for task in tasks}


@brokers
async def test_killed_consumer_chunks_come_back(broker: Broker) -> None:
    ack_wait = 2.0
    dispatcher = broker.make(ack_wait=ack_wait)
    await dispatcher.open()
    tasks = new_tasks(10)
    await dispatcher.publish(tasks)
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # not this directory first on sys.path: its http/ would shadow the stdlib's
        CONSUMER,
        broker.url,
        broker.queue,
        str(ack_wait),
        "4",
        stdout=asyncio.subprocess.PIPE,
    )
    assert victim.stdout is not None
    held: set[str] = set()
    seen: dict[str, list[float]] = {}
    try:
        async with asyncio.timeout(20):
            while len(held) < 4:
                line = (await victim.stdout.readline()).decode().strip()
                assert line, "the consumer process exited"
                if line.startswith("got "):
                    held.add(line.removeprefix("got "))
        held_at = time.monotonic()

        async def handler(task: ChunkTask) -> None:
            seen.setdefault(task.message_id, []).append(time.monotonic())

        async with consuming(dispatcher, handler, 8):
            assert await poll(lambda: len(seen) >= len(tasks) - len(held), timeout=10)
            assert not held & set(seen), "a held chunk was delivered twice"
            victim.kill()
            killed_at = time.monotonic()
            await victim.wait()
            assert await poll(lambda: held <= set(seen), timeout=ack_wait * 3 + 10)
            back = [seen[message_id][0] - killed_at for message_id in held]
        print(
            f"\n{broker.kind}: {len(held)} chunks held by a SIGKILLed consumer came back "
            f"{min(back):.2f}-{max(back):.2f} s after the kill, "
            f"{max(back) + killed_at - held_at:.2f} s after it took them (ack_wait {ack_wait:g} s)"
        )
        assert sorted(seen) == sorted(task.message_id for task in tasks)  # none lost
        assert all(len(times) == 1 for times in seen.values())
        assert await broker.stored() == 0
        # JetStream: redelivered ack_wait after the victim's last in-progress
        # signal (every ack_wait/3); RabbitMQ: as soon as the TCP connection closes.
        assert max(back) < (ack_wait + 1.5 if broker.kind == "nats" else 2.0)
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()


@jetstream
async def test_chunk_longer_than_ack_wait_is_not_redelivered(broker: Broker) -> None:
    ack_wait = 1.0
    dispatcher = broker.make(ack_wait=ack_wait)
    await dispatcher.open()
    [task] = new_tasks(1)
    await dispatcher.publish([task])
    calls: list[str] = []
    finished = asyncio.Event()

    async def slow(task: ChunkTask) -> None:
        calls.append(task.message_id)
        await asyncio.sleep(ack_wait * 3.5)  # the chunk's work
        finished.set()

    # Two consumers: a redelivery would reach the idle one while the first works.
    async with consuming(dispatcher, slow, 1), consuming(dispatcher, slow, 1):
        assert await poll(finished.is_set, timeout=10)
        assert await poll(lambda: _acked(broker), timeout=5)
    info = await broker.consumer_info()
    assert calls == [task.message_id]
    assert info.num_redelivered == 0


async def _acked(broker: Broker) -> bool:
    info = await broker.consumer_info()
    return info.num_ack_pending == 0 and await broker.stored() == 0


@pytest.mark.parametrize("broker", ["inprocess", "nats"], indirect=True)
async def test_same_task_twice_is_consumed_once(broker: Broker) -> None:
    dispatcher = broker.make()
    await dispatcher.open()
    [task] = new_tasks(1)
    await dispatcher.publish([task])
    await dispatcher.publish([task, task])
    assert await broker.stored() == 1
    calls: list[str] = []
    other = new_tasks(1)

    async def handler(task: ChunkTask) -> None:
        calls.append(task.message_id)

    async with consuming(dispatcher, handler, 4):
        await dispatcher.publish(other)  # consumed after the duplicates, if any
        assert await poll(lambda: len(calls) >= 2, timeout=10)
        assert await poll(lambda: _empty(broker), timeout=5)
    assert sorted(calls) == sorted([task.message_id, other[0].message_id])


async def _empty(broker: Broker) -> bool:
    return await broker.stored() == 0


async def test_raising_handler_is_retried(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = broker.make(retry_backoff=0.05)
    await dispatcher.open()
    [task] = new_tasks(1)
    calls: list[str] = []

    async def flaky(task: ChunkTask) -> None:
        calls.append(task.message_id)
        if len(calls) <= 2:
            raise RuntimeError("job store unreachable")

    with caplog.at_level(logging.WARNING, logger="iogate.jobs.dispatch"):
        async with consuming(dispatcher, flaky, 2):
            await dispatcher.publish([task])
            assert await poll(lambda: len(calls) >= 3, timeout=10)
        assert await broker.stored() == 0
    assert calls == [task.message_id] * 3
    assert sum("job store unreachable" in r.getMessage() for r in caplog.records) == 2


async def test_in_process_drops_a_chunk_after_five_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with InProcessDispatcher(retry_backoff=0.01) as dispatcher:
        [task] = new_tasks(1)
        calls: list[str] = []

        async def broken(task: ChunkTask) -> None:
            calls.append(task.message_id)
            raise RuntimeError("always")

        with caplog.at_level(logging.WARNING, logger="iogate.jobs.dispatch"):
            async with consuming(dispatcher, broken, 1):
                await dispatcher.publish([task])
                assert await poll(lambda: dispatcher.unfinished == 0, timeout=10)
                assert len(calls) == 5
                await dispatcher.publish([task])  # a restart resumes it
                assert await poll(lambda: dispatcher.unfinished == 0, timeout=5)
                assert len(calls) == 10
        assert any("failed 5 times" in r.getMessage() for r in caplog.records)


async def test_cancelled_consumer_hands_its_chunk_back(broker: Broker) -> None:
    dispatcher = broker.make(ack_wait=30.0)
    await dispatcher.open()
    [task] = new_tasks(1)
    await dispatcher.publish([task])
    started = asyncio.Event()
    cancelled: list[str] = []

    async def stuck(task: ChunkTask) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(task.message_id)
            raise

    async with consuming(dispatcher, stuck, 1):
        assert await poll(started.is_set, timeout=10)
    assert cancelled == [task.message_id]
    calls: list[str] = []

    async def handler(task: ChunkTask) -> None:
        calls.append(task.message_id)

    # Far sooner than ack_wait: the chunk was handed back, not timed out.
    async with consuming(dispatcher, handler, 1):
        assert await poll(lambda: calls == [task.message_id], timeout=5)
        assert await poll(lambda: _empty(broker), timeout=5)


@brokers
async def test_publish_fails_when_the_queue_is_gone(broker: Broker) -> None:
    dispatcher = broker.make()
    await dispatcher.open()
    if broker.kind == "nats":
        nc = await nats.connect(broker.url, connect_timeout=2, allow_reconnect=False)
        await nc.jetstream(timeout=5).delete_stream(broker.queue)
        await nc.close()
    else:
        async with await aio_pika.connect(broker.url, timeout=5) as conn:
            await (await conn.channel()).queue_delete(broker.queue)
    started = time.monotonic()
    with pytest.raises(JobError, match=broker.queue):
        await dispatcher.publish(new_tasks(3))
    assert time.monotonic() - started < 6


@brokers
async def test_incompatible_existing_queue_is_refused(broker: Broker) -> None:
    if broker.kind == "nats":
        nc = await nats.connect(broker.url, connect_timeout=2, allow_reconnect=False)
        await nc.jetstream(timeout=5).add_stream(
            name=broker.queue, subjects=[f"{broker.queue}.chunks"]
        )  # retention "limits", not a work queue
        await nc.close()
    else:
        async with await aio_pika.connect(broker.url, timeout=5) as conn:
            await (await conn.channel()).declare_queue(broker.queue, durable=True)  # classic
    with pytest.raises(JobError, match="delete it or choose another"):
        await broker.make().open()


@pytest.mark.parametrize("scheme", ["nats", "amqp"])
@pytest.mark.parametrize("server", ["refuses", "never answers"])
async def test_unreachable_broker_is_a_job_error(scheme: str, server: str) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts, never answers

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1] if server == "never answers" else 1
    user = "guest" if scheme == "amqp" else "worker"
    url = f"{scheme}://{user}:s3cret-pw@127.0.0.1:{port}/"
    dispatcher = open_dispatcher(url, queue="iogate-test-unreachable", ack_wait=5)
    started = time.monotonic()
    try:
        with pytest.raises(JobError) as raised:
            await dispatcher.open()
    finally:
        elapsed = time.monotonic() - started
        await dispatcher.aclose()
        listener.close()
        for writer in accepted:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await listener.wait_closed()
    message = str(raised.value)
    assert f"127.0.0.1:{port}" in message
    assert "s3cret-pw" not in message
    assert elapsed < 3.0, f"{elapsed:.2f} s"


async def test_lifecycle(broker: Broker) -> None:
    dispatcher = broker.make()
    with pytest.raises(ClosedError):
        await dispatcher.publish(new_tasks(1))
    await dispatcher.open()
    await dispatcher.open()  # idempotent
    assert "open" in repr(dispatcher)
    await dispatcher.aclose()
    await dispatcher.aclose()  # idempotent
    with pytest.raises(ClosedError):
        await dispatcher.publish(new_tasks(1))
    with pytest.raises(ClosedError):
        await dispatcher.open()


async def test_consume_returns_when_the_dispatcher_closes(broker: Broker) -> None:
    dispatcher = broker.make()
    await dispatcher.open()
    consumer = asyncio.create_task(dispatcher.consume(_nothing, prefetch=2))
    await dispatcher.publish(new_tasks(1))
    assert await poll(lambda: _empty(broker), timeout=10)
    await dispatcher.aclose()
    async with asyncio.timeout(5):
        await consumer  # returns, no error


async def _nothing(task: ChunkTask) -> None:
    return None


@brokers
async def test_an_idle_consumer_still_takes_chunks(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle pull requests expire over and over; nats-py sometimes ends one with
    the builtin TimeoutError, which once stopped the consumer without a word."""
    from iogate.jobs.dispatch import jetstream

    monkeypatch.setattr(jetstream, "FETCH_WAIT", 0.02)  # many expiring pulls a second
    dispatcher = broker.make()
    await dispatcher.open()
    seen: list[str] = []

    async def handler(task: ChunkTask) -> None:
        seen.append(task.message_id)

    async with consuming(dispatcher, handler, 2) as consumer:
        await asyncio.sleep(4)  # idle: measuring that the consumer outlives its pulls
        assert not consumer.done(), consumer
        tasks = new_tasks(3)
        await dispatcher.publish(tasks)
        assert await poll(lambda: len(seen) >= 3, timeout=15)
