"""Message brokers for durable batch jobs: RabbitMQ and NATS JetStream, direct and via taskiq.

Batch jobs cut a request into chunks that ``iogate worker`` processes (several
machines) take from a broker with at-least-once delivery that survives a worker
SIGKILL: a chunk's message is acknowledged only after its results are stored. This
script measures the candidates on this machine, over loopback:

1. publish: persistent ~2 KB messages (a chunk descriptor) with publisher confirms
   (RabbitMQ) or JetStream acks (NATS, each with a ``Nats-Msg-Id``), ``--window``
   publishes in flight, messages per second;
2. e2e: publish -> consume -> ack with 1 and with 2 consumer processes (prefetch, or
   fetch batch, ``--prefetch``); the clock runs from the first publish until the
   consumers have reported the last ack;
3. redelivery: a consumer process takes ``--prefetch`` messages without acking and is
   SIGKILLed while another consumer runs; the time until that consumer has them, and
   the count of unique ids it acked (none may be lost). JetStream redelivers after
   the consumer's AckWait (``--ack-wait``, 5 s), RabbitMQ when the connection drops.
   Then once more with the victim's network cut silently (a loopback relay that stops
   passing bytes, as when a worker's machine vanishes: no TCP close reaches the
   broker; RabbitMQ then waits for the AMQP heartbeat, set to 5 s for this trial);
4. dedup: JetStream ``Nats-Msg-Id`` (the same id twice is stored once); RabbitMQ has
   no equivalent (the same message twice is queued twice);
5. operations: a quorum queue on this single node, message size limits, and
   publishing to a broker that refuses, never answers, or goes silent on an open
   connection (2 s timeouts).

Variants: ``rabbit-classic`` (aio-pika, classic durable queue, persistent messages),
``rabbit-quorum`` (aio-pika, quorum queue), ``jetstream`` (nats-py, work-queue stream
on file storage, one durable pull consumer shared by the workers), and, unless
``--no-taskiq``, ``taskiq-rabbit`` (taskiq-aio-pika: its default quorum queue, ack
when the result is saved) and ``taskiq-jetstream`` (taskiq-nats
PullBasedJetStreamBroker, fetch batch ``--prefetch``). Consumers do no work beyond
decoding the message. All variants run in one process in interleaved rounds
(A B C ..., then ... C B A) so drift in machine load hits them alike; each figure is
the median over the rounds, with the lowest and highest.

Not like for like: RabbitMQ confirms a persistent message once it is fsynced (quorum
queues: on a majority of nodes), while a single JetStream server acks once the
message is written to its file store and fsyncs on an interval (``sync_interval``,
2 minutes by default): an OS crash or power loss can lose acked messages unless the
stream is replicated (R3) or the server syncs ``always``.

Run it outside iogate's venv (the broker clients are not iogate dependencies)::

    python3 -m venv /tmp/brokers/venv
    /tmp/brokers/venv/bin/pip install aio-pika nats-py taskiq taskiq-aio-pika taskiq-nats
    /tmp/brokers/venv/bin/python bench/brokers.py [--rounds 3] [--messages 20000]

It needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and ``nats-server -js`` on
127.0.0.1:4222. Everything it creates is named ``iogate_bench_*`` and deleted at the
end. Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import aio_pika
import nats
import nats.errors
import nats.js.errors
from nats.js import api as js_api

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
STREAM = "iogate_bench_chunks"
SUBJECT = "iogate_bench.chunks"
DURABLE = "iogate_bench_workers"
TQ_NAME = "iogate_bench_taskiq"
TQ_TASK = "iogate_bench_chunk"
STEP_TIMEOUT = 120.0  # seconds: a step that takes longer fails
CONSUMER_LIFETIME = 300.0  # seconds: a consumer process exits by itself after this
SCRIPT = os.path.abspath(__file__)
HEARTBEAT = 5  # seconds: AMQP heartbeat of the consumer whose network is cut (aio-pika: 60)

OnMessage = Callable[[int, bool], None]
Stop = Callable[[], Awaitable[None]]


def chunk_body(index: int, size: int) -> bytes:
    """A chunk descriptor padded to ``size`` bytes of JSON."""
    head = b'{"job":"iogate_bench_job","index":%d,"pad":"' % index
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


def index_of(data: bytes) -> int:
    return int(json.loads(data)["index"])


# --------------------------------------------------------------------------- variants


class Variant:
    name = ""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    async def open(self) -> None:
        """Connect the publishing side."""

    async def reset(self) -> None:
        """Make the queue or stream exist and be empty."""

    async def publish(self, index: int, msg_id: str | None = None) -> None:
        raise NotImplementedError

    async def depth(self) -> int:
        raise NotImplementedError

    async def consume(self, prefetch: int, on_msg: OnMessage, ack: bool) -> Stop:
        """Start a consumer; ``on_msg(index, redelivered)`` after each ack (or receipt)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Delete what was created and disconnect."""


class Rabbit(Variant):
    def __init__(self, args: argparse.Namespace, queue_type: str) -> None:
        super().__init__(args)
        self.queue_type = queue_type
        self.name = f"rabbit-{queue_type}"
        self.queue = f"iogate_bench_{queue_type}"
        self.conn: aio_pika.abc.AbstractConnection | None = None
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        self.conn = await aio_pika.connect(AMQP_URL, timeout=10)
        self.channel = await self.conn.channel(publisher_confirms=True)

    async def reset(self) -> None:
        assert self.channel is not None
        await self.channel.queue_delete(self.queue)
        await self.channel.declare_queue(
            self.queue, durable=True, arguments={"x-queue-type": self.queue_type}
        )

    async def publish(self, index: int, msg_id: str | None = None) -> None:
        assert self.channel is not None
        message = aio_pika.Message(
            chunk_body(index, self.args.size),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=msg_id or str(index),
        )
        await self.channel.default_exchange.publish(
            message, routing_key=self.queue, timeout=STEP_TIMEOUT
        )

    async def depth(self) -> int:
        assert self.channel is not None
        queue = await self.channel.declare_queue(self.queue, passive=True)
        return int(queue.declaration_result.message_count or 0)

    async def consume(self, prefetch: int, on_msg: OnMessage, ack: bool) -> Stop:
        url = AMQP_URL
        if self.args.via_port:  # a victim whose network is cut: through a Proxy
            url = f"amqp://guest:guest@127.0.0.1:{self.args.via_port}/?heartbeat={HEARTBEAT}"
        conn = await aio_pika.connect(url, timeout=10)
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(self.queue, ensure=True)

        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if ack:
                await message.ack()
            on_msg(index_of(message.body), bool(message.redelivered))

        await queue.consume(handle)
        return conn.close

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.queue_delete(self.queue)
        if self.conn is not None:
            await self.conn.close()


class JetStream(Variant):
    name = "jetstream"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.nc: nats.NATS | None = None

    async def open(self) -> None:
        self.nc = await nats.connect(NATS_URL, connect_timeout=5)
        self.js = self.nc.jetstream(timeout=STEP_TIMEOUT)

    async def reset(self) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.js.delete_stream(STREAM)
        await self.js.add_stream(
            js_api.StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=js_api.RetentionPolicy.WORK_QUEUE,
                storage=js_api.StorageType.FILE,
                duplicate_window=120.0,
            )
        )
        await self.js.add_consumer(
            STREAM,
            js_api.ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=self.args.ack_wait,
                max_ack_pending=1000,
            ),
        )

    async def publish(self, index: int, msg_id: str | None = None) -> None:
        await self.js.publish(
            SUBJECT,
            chunk_body(index, self.args.size),
            headers={"Nats-Msg-Id": msg_id or f"iogate_bench_job:{index}"},
        )

    async def depth(self) -> int:
        return int((await self.js.stream_info(STREAM)).state.messages)

    async def consume(self, prefetch: int, on_msg: OnMessage, ack: bool) -> Stop:
        url = f"nats://127.0.0.1:{self.args.via_port}" if self.args.via_port else NATS_URL
        nc = await nats.connect(url, connect_timeout=5)
        sub = await nc.jetstream().pull_subscribe_bind(DURABLE, STREAM)

        async def loop() -> None:
            held = 0
            deadline = time.monotonic() + CONSUMER_LIFETIME
            while time.monotonic() < deadline:
                want = prefetch if ack else prefetch - held
                if want <= 0:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    msgs = await sub.fetch(want, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    if ack:
                        await msg.ack()
                    else:
                        held += 1
                    on_msg(index_of(msg.data), msg.metadata.num_delivered > 1)

        task = asyncio.create_task(loop())

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await nc.close()

        return stop

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self.js.delete_stream(STREAM)
            await self.nc.close()


class Taskiq(Variant):
    """taskiq over RabbitMQ or JetStream: ``kiq`` to publish, a Receiver to consume."""

    def __init__(self, args: argparse.Namespace, over: str) -> None:
        super().__init__(args)
        self.over = over
        self.name = f"taskiq-{over}"
        self.pad = "x" * max(0, args.size - 120)  # the rest of the ~2 KB is taskiq's JSON
        self.broker = self._broker()
        self.task = self.broker.register_task(self._noop, task_name=TQ_TASK)

    @staticmethod
    async def _noop(index: int, pad: str) -> None:
        return None

    def _broker(self):  # type: ignore[no-untyped-def]
        if self.over == "rabbit":
            from taskiq_aio_pika import AioPikaBroker, Exchange, Queue

            return AioPikaBroker(
                AMQP_URL,
                qos=self.args.prefetch,
                exchange=Exchange(name=TQ_NAME),
                task_queues=[Queue(name=TQ_NAME)],
                dead_letter_queue=Queue(name=f"{TQ_NAME}_dead"),
            )
        from taskiq_nats import PullBasedJetStreamBroker

        return PullBasedJetStreamBroker(
            NATS_URL,
            subject=f"{TQ_NAME}.tasks",
            stream_name=TQ_NAME,
            durable=f"{TQ_NAME}_workers",
            stream_config=js_api.StreamConfig(
                retention=js_api.RetentionPolicy.WORK_QUEUE,
                storage=js_api.StorageType.FILE,
            ),
            consumer_config=js_api.ConsumerConfig(
                durable_name=f"{TQ_NAME}_workers",
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=self.args.ack_wait,
                max_ack_pending=1000,
            ),
            pull_consume_batch=self.args.prefetch,
            pull_consume_timeout=1.0,
        )

    async def open(self) -> None:
        await self.broker.startup()
        if self.over == "rabbit":  # the broker's robust channel reports stale queue depths
            self.admin = await aio_pika.connect(AMQP_URL, timeout=10)
            self.channel = await self.admin.channel()

    async def reset(self) -> None:
        if self.over == "rabbit":
            await (await self.channel.get_queue(TQ_NAME, ensure=True)).purge()
        else:
            await self.broker.js.purge_stream(TQ_NAME)

    async def publish(self, index: int, msg_id: str | None = None) -> None:
        await self.task.kiq(index, self.pad)

    async def depth(self) -> int:
        if self.over == "rabbit":
            queue = await self.channel.declare_queue(TQ_NAME, passive=True)
            return int(queue.declaration_result.message_count or 0)
        return int((await self.broker.js.stream_info(TQ_NAME)).state.messages)

    async def consume(self, prefetch: int, on_msg: OnMessage, ack: bool) -> Stop:
        from taskiq.receiver import Receiver

        broker = self._broker()

        async def chunk(index: int, pad: str) -> None:
            on_msg(index, False)

        broker.register_task(chunk, task_name=TQ_TASK)
        broker.is_worker_process = True
        await broker.startup()
        receiver = Receiver(broker, run_startup=False, max_async_tasks=prefetch)
        finish = asyncio.Event()
        task = asyncio.create_task(receiver.listen(finish))

        async def stop() -> None:
            finish.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await broker.shutdown()

        return stop

    async def close(self) -> None:
        await self.broker.shutdown()
        if self.over == "rabbit":
            await self.channel.queue_delete(TQ_NAME)
            await self.channel.queue_delete(f"{TQ_NAME}_dead")
            await self.channel.exchange_delete(TQ_NAME)
            await self.admin.close()
        else:
            nc = await nats.connect(NATS_URL, connect_timeout=5)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(TQ_NAME)
            await nc.close()


def make_variant(name: str, args: argparse.Namespace) -> Variant:
    if name.startswith("rabbit-"):
        return Rabbit(args, name.removeprefix("rabbit-"))
    if name == "jetstream":
        return JetStream(args)
    return Taskiq(args, name.removeprefix("taskiq-"))


# --------------------------------------------------------------- consumer process


async def consumer_main(args: argparse.Namespace) -> None:
    """A consumer process: ``ready``, then ``+N`` acks (every 10 ms) or ``got I R`` lines."""
    logging.basicConfig(level=logging.ERROR)
    out = sys.stdout
    acked = 0

    def on_msg(index: int, redelivered: bool) -> None:
        nonlocal acked
        if args.hold:
            out.write(f"got {index} {int(redelivered)}\n")
            out.flush()
        else:
            acked += 1

    variant = make_variant(args.consume, args)
    stop = await variant.consume(args.prefetch, on_msg, ack=not args.hold)
    out.write("ready\n")
    out.flush()
    deadline = time.monotonic() + CONSUMER_LIFETIME
    while time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        if acked:
            out.write(f"+{acked}\n")
            out.flush()
            acked = 0
    await stop()


class ConsumerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, variant: str, args: argparse.Namespace, hold: bool = False, via_port: int = 0
    ) -> ConsumerProcess:
        argv = [sys.executable, SCRIPT, "--consume", variant]
        argv += ["--prefetch", str(args.prefetch), "--size", str(args.size)]
        argv += ["--ack-wait", str(args.ack_wait)] + (["--hold"] if hold else [])
        argv += ["--via-port", str(via_port)]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        self = cls(proc)
        line = await asyncio.wait_for(self.readline(), 60)
        if line != "ready":
            await self.stop()
            raise RuntimeError(f"{variant} consumer did not start: {line!r}")
        return self

    async def readline(self) -> str:
        assert self.proc.stdout is not None
        return (await self.proc.stdout.readline()).decode().strip()

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------- measurements


async def pump(n: int, publish: Callable[[int], Awaitable[None]], window: int) -> None:
    """Publish indices 0..n-1 with ``window`` publishes in flight."""
    next_index = 0

    async def lane() -> None:
        nonlocal next_index
        while next_index < n:
            index = next_index
            next_index += 1
            await publish(index)

    await asyncio.gather(*(lane() for _ in range(min(window, n))))


async def measure_publish(variant: Variant, args: argparse.Namespace) -> float:
    await variant.reset()
    started = time.perf_counter()
    await asyncio.wait_for(pump(args.messages, variant.publish, args.window), STEP_TIMEOUT)
    elapsed = time.perf_counter() - started
    stored = await variant.depth()
    if stored != args.messages:
        raise RuntimeError(f"{variant.name}: {stored} stored of {args.messages}")
    return args.messages / elapsed


async def measure_e2e(variant: Variant, args: argparse.Namespace, consumers: int) -> float:
    await variant.reset()
    procs = [await ConsumerProcess.start(variant.name, args) for _ in range(consumers)]
    n = args.e2e_messages
    acked = 0
    done = asyncio.Event()

    async def tally(proc: ConsumerProcess) -> None:
        nonlocal acked
        while not done.is_set():
            line = await proc.readline()
            if not line:
                return
            acked += int(line.removeprefix("+"))
            if acked >= n:
                done.set()

    tallies = [asyncio.create_task(tally(p)) for p in procs]
    try:
        started = time.perf_counter()
        await asyncio.wait_for(pump(n, variant.publish, args.window), STEP_TIMEOUT)
        await asyncio.wait_for(done.wait(), STEP_TIMEOUT)
        elapsed = time.perf_counter() - started
    finally:
        for task in tallies:
            task.cancel()
        await asyncio.gather(*(p.stop() for p in procs))
    if acked != n:
        raise RuntimeError(f"{variant.name}: {acked} acked of {n}")
    return n / elapsed


async def measure_redelivery(
    variant: Variant, args: argparse.Namespace, cut: bool = False
) -> dict[str, float]:
    """SIGKILL a consumer that holds unacked messages; time until another has them.

    ``cut``: the consumer talks to the broker through a ``Proxy`` that goes silent when
    it is killed, as when a worker's machine vanishes: the broker sees no TCP close.
    """
    total = args.redelivery_messages
    await variant.reset()
    for index in range(total):
        await variant.publish(index)
    proxy = Proxy(5672 if isinstance(variant, Rabbit) else 4222)
    via_port = await proxy.start() if cut else 0
    victim = await ConsumerProcess.start(variant.name, args, hold=True, via_port=via_port)
    held: set[int] = set()
    async with asyncio.timeout(30):
        while len(held) < args.prefetch:
            line = await victim.readline()
            if not line:
                raise RuntimeError("victim consumer exited")
            held.add(int(line.split()[1]))
    held_at = time.perf_counter()

    seen: list[tuple[int, float, bool]] = []
    got_rest = asyncio.Event()
    got_held = asyncio.Event()

    def on_msg(index: int, redelivered: bool) -> None:
        seen.append((index, time.perf_counter(), redelivered))
        indices = {i for i, _, _ in seen}
        if len(indices - held) >= total - len(held):
            got_rest.set()
        if held <= indices:
            got_held.set()

    stop = await variant.consume(args.prefetch, on_msg, ack=True)
    try:
        await asyncio.wait_for(got_rest.wait(), 30)
        killed_at = time.perf_counter()
        proxy.frozen = True
        await victim.stop(signal.SIGKILL)
        await asyncio.wait_for(got_held.wait(), args.ack_wait * 3 + HEARTBEAT * 4 + 30)
        await asyncio.sleep(0.5)  # any duplicate would show up here
    finally:
        await stop()
        await victim.stop(signal.SIGKILL)
        await proxy.drop()
    back = [t for i, t, _ in seen if i in held]
    unique = {i for i, _, _ in seen}
    return {
        "held": len(held),
        "first_s": min(back) - killed_at,
        "last_s": max(back) - killed_at,
        "since_delivery_s": max(back) - held_at,
        "unique": len(unique),
        "total": total,
        "duplicates": len(seen) - len(unique),
        "flagged": sum(1 for i, _, r in seen if i in held and r),
    }


async def measure_dedup(variant: Variant) -> str:
    await variant.reset()
    await variant.publish(7, msg_id="iogate_bench_job:7")
    await variant.publish(7, msg_id="iogate_bench_job:7")
    stored = await variant.depth()
    return f"same message id published twice: {stored} stored"


# ------------------------------------------------------------------------ operations


class Proxy:
    """A loopback TCP relay that can go silent (``freeze``) or drop every connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frozen = False
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        """Listen on a free loopback port, returned."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, up_writer]

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if not self.frozen:
                        dst.write(data)
                        await dst.drain()
            if not self.frozen:  # frozen: the other side sees neither data nor a close
                dst.close()

        await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))

    async def drop(self) -> None:
        if hasattr(self, "server"):
            self.server.close()
        for writer in self.writers:
            writer.transport.abort()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def timed(call: Awaitable[object], limit: float = 10.0) -> str:
    """What ``call`` raised (or that it succeeded) and after how long; gives up at ``limit``."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(call, limit)
        outcome = "succeeded"
    except Exception as exc:
        outcome = f"{type(exc).__module__}.{type(exc).__qualname__}"
        if isinstance(exc, TimeoutError) and time.perf_counter() - started >= limit:
            outcome = "no answer yet (stopped waiting)"
    return f"{outcome} after {time.perf_counter() - started:.2f} s"


async def amqp_connect(port: int) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{port}/", timeout=2)


async def quiet(error: Exception) -> None:
    """nats-py's error callback; the default one logs every failed attempt."""


async def nats_connect(port: int, defaults: bool = False) -> nats.NATS:
    """nats-py's defaults retry a failed first connect 60 times, 2 s apart."""
    if defaults:
        return await nats.connect(f"nats://127.0.0.1:{port}", error_cb=quiet)
    return await nats.connect(
        f"nats://127.0.0.1:{port}",
        connect_timeout=2,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        error_cb=quiet,
    )


async def unreachable() -> list[str]:
    """Errors and their timing when the broker refuses, never answers, or goes silent."""
    lines = []
    port = free_port()
    lines.append(f"refused, aio-pika connect: {await timed(amqp_connect(port))}")
    once = "nats-py connect (allow_reconnect=False, max_reconnect_attempts=1)"
    lines.append(f"refused, {once}: {await timed(nats_connect(port))}")
    retrying = await timed(nats_connect(port, defaults=True), limit=4)
    lines.append(f"refused, nats-py connect with its default options: {retrying}")

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await reader.read()  # accepts, never answers

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lines.append(f"never answers, aio-pika connect: {await timed(amqp_connect(port))}")
    lines.append(f"never answers, {once}: {await timed(nats_connect(port))}")
    server.close()

    for how in ("silent", "dropped"):
        amqp_proxy, nats_proxy = Proxy(5672), Proxy(4222)
        conn = await amqp_connect(await amqp_proxy.start())
        channel = await conn.channel(publisher_confirms=True)
        queue = await channel.declare_queue("iogate_bench_unreachable", durable=True)
        nc = await nats_connect(await nats_proxy.start(), defaults=True)
        js = nc.jetstream(timeout=2)
        await js.add_stream(name="iogate_bench_unreachable", subjects=["iogate_bench.unr"])
        if how == "silent":
            amqp_proxy.frozen = nats_proxy.frozen = True
        else:
            await amqp_proxy.drop()
            await nats_proxy.drop()
            await asyncio.sleep(0.1)
        message = aio_pika.Message(b"x", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        publish = channel.default_exchange.publish(message, queue.name, timeout=2)
        lines.append(f"{how} after connect, aio-pika publish: {await timed(publish)}")
        nats_publish = js.publish("iogate_bench.unr", b"x", timeout=2)
        lines.append(f"{how} after connect, nats-py publish: {await timed(nats_publish)}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)
        await amqp_proxy.drop()
        await nats_proxy.drop()
    async with await aio_pika.connect(AMQP_URL, timeout=10) as conn:
        await (await conn.channel()).queue_delete("iogate_bench_unreachable")
    nc = await nats.connect(NATS_URL)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream("iogate_bench_unreachable")
    await nc.close()
    return lines


async def operations(args: argparse.Namespace) -> list[str]:
    lines = []
    async with await aio_pika.connect(AMQP_URL, timeout=10) as conn:
        server = conn.transport.connection.server_properties  # type: ignore[union-attr]
        version = server.get("version", b"?")
        version = version.decode() if isinstance(version, bytes) else version
        channel = await conn.channel()
        try:
            await channel.declare_queue(
                "iogate_bench_probe", durable=True, arguments={"x-queue-type": "quorum"}
            )
            lines.append(f"RabbitMQ {version}: quorum queue declared on this single node")
            await channel.queue_delete("iogate_bench_probe")
        except Exception as exc:
            lines.append(f"RabbitMQ {version}: quorum queue refused: {exc!r}")
    if args.size_probe:
        limit = 128 * 1024 * 1024  # RabbitMQ's max_message_size default since 3.8
        async with await aio_pika.connect(AMQP_URL, timeout=10) as conn:
            channel = await conn.channel(publisher_confirms=True)
            await channel.declare_queue("iogate_bench_size", durable=True)
            for size in (4 * 1024 * 1024, limit + 1):
                message = aio_pika.Message(b"x" * size)
                publish = channel.default_exchange.publish(message, "iogate_bench_size")
                lines.append(f"RabbitMQ publish of {size:,} bytes: {await timed(publish)}")
                if channel.is_closed:
                    channel = await conn.channel()
            await channel.queue_delete("iogate_bench_size")
    nc = await nats.connect(NATS_URL)
    info = nc._server_info  # the INFO the server sent
    lines.append(
        f"nats-server {info.get('version')}: max_payload {nc.max_payload:,} bytes, "
        f"JetStream {'on' if info.get('jetstream') else 'off'}"
    )
    js = nc.jetstream(timeout=5)
    await js.add_stream(name="iogate_bench_size", subjects=["iogate_bench.size"])
    publish = js.publish("iogate_bench.size", b"x" * (nc.max_payload + 1))
    lines.append(f"JetStream publish of max_payload + 1 bytes: {await timed(publish)}")
    await js.delete_stream("iogate_bench_size")
    await nc.close()
    return lines + await unreachable()


# ---------------------------------------------------------------------------- main


def spread(values: list[float]) -> str:
    if not values:
        return "failed"
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


async def run(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.CRITICAL)  # the clients log the failures we provoke
    names = ["rabbit-classic", "rabbit-quorum", "jetstream"]
    if args.taskiq:
        names += ["taskiq-rabbit", "taskiq-jetstream"]
    variants = [make_variant(name, args) for name in names]
    for variant in variants:
        await variant.open()
    print(f"# brokers: load average at start {os.getloadavg()}, {os.cpu_count()} CPUs")
    print(
        f"# {args.rounds} rounds; publish {args.messages:,} x {args.size} B, "
        f"e2e {args.e2e_messages:,}, window {args.window}, prefetch {args.prefetch}"
    )
    tests: list[tuple[str, Callable[[Variant], Awaitable[float]]]] = [
        ("publish msg/s", lambda v: measure_publish(v, args)),
        ("e2e 1 consumer msg/s", lambda v: measure_e2e(v, args, 1)),
        ("e2e 2 consumers msg/s", lambda v: measure_e2e(v, args, 2)),
    ]
    results: dict[tuple[str, str], list[float]] = {}
    started = time.perf_counter()
    try:
        for round_no in range(args.rounds):
            order = variants if round_no % 2 == 0 else variants[::-1]
            for label, test in tests:
                for variant in order:
                    try:
                        value = await test(variant)
                    except Exception as exc:
                        print(f"# round {round_no + 1} {variant.name} {label}: {exc!r}")
                        continue
                    results.setdefault((variant.name, label), []).append(value)
                    print(f"# round {round_no + 1} {variant.name} {label}: {value:,.0f}")
        print(f"\n| variant | {' | '.join(label for label, _ in tests)} |")
        print(f"|---|{'---|' * len(tests)}")
        for variant in variants:
            cells = [spread(results.get((variant.name, label), [])) for label, _ in tests]
            print(f"| {variant.name} | {' | '.join(cells)} |")
        print("\nmedian (lowest-highest) over rounds\n")

        direct = [v for v in variants if not isinstance(v, Taskiq)]
        trials = [(v, False) for v in direct] * args.redelivery_rounds
        if args.cut:
            trials += [(v, True) for v in direct if v.name != "rabbit-quorum"]
        for variant, cut in trials:
            how = "SIGKILL + silent network" if cut else "SIGKILL"
            try:
                r = await measure_redelivery(variant, args, cut)
            except Exception as exc:
                print(f"redelivery {variant.name} ({how}): failed {exc!r}")
                continue
            print(
                f"redelivery {variant.name} ({how}): {r['held']:.0f} unacked; back after "
                f"{r['first_s']:.2f}-{r['last_s']:.2f} s (since delivery "
                f"{r['since_delivery_s']:.2f} s), {r['flagged']:.0f} flagged redelivered; "
                f"{r['unique']:.0f}/{r['total']:.0f} unique ids acked, "
                f"{r['duplicates']:.0f} duplicates"
            )
        for variant in direct:
            print(f"dedup {variant.name}: {await measure_dedup(variant)}")
        print()
        for line in await operations(args):
            print(line)
    finally:
        for variant in variants:
            with contextlib.suppress(Exception):
                await variant.close()
    print(
        f"\n# {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()}; "
        f"JetStream AckWait {args.ack_wait:g} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000, help="publish test")
    parser.add_argument("--e2e-messages", type=int, default=4_000)
    parser.add_argument("--size", type=int, default=2048, help="message bytes")
    parser.add_argument("--window", type=int, default=64, help="publishes in flight")
    parser.add_argument("--prefetch", type=int, default=16)
    parser.add_argument("--ack-wait", type=float, default=5.0, help="JetStream AckWait, s")
    parser.add_argument("--redelivery-rounds", type=int, default=1)
    parser.add_argument("--redelivery-messages", type=int, default=64)
    parser.add_argument("--no-taskiq", dest="taskiq", action="store_false")
    parser.add_argument("--no-size-probe", dest="size_probe", action="store_false")
    parser.add_argument(
        "--no-cut", dest="cut", action="store_false", help="skip the silent-network redelivery"
    )
    parser.add_argument("--via-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--consume", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(consumer_main(args))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
