"""What the three dispatchers share: lifecycle state, defaults, retry wait, checks.

The helpers here are the parts of a dispatcher that do not depend on its
broker: the state of its lifecycle, the full-jitter wait before a failed
chunk is retried, the checks on names and ``prefetch``, publishing a batch
``PUBLISH_WINDOW`` messages at a time, settling a finished chunk even when
cancelled, stopping the handlers still running, and closing a connection
that may already be gone. Nothing here imports a broker's driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Self

from iogate.core.errors import ConfigError
from iogate.core.redact import redact_text, url_password
from iogate.jobs.model import ChunkTask, JobError
from iogate.resilience.retry import backoff_delay

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_RETRY_BACKOFF",
    "PUBLISH_WINDOW",
    "RETRY_BACKOFF_MAX",
    "BrokerDispatcher",
    "State",
    "check_name",
    "check_prefetch",
    "close_quietly",
    "finish",
    "first_error",
    "logger",
    "publish_all",
    "retry_wait",
    "stop_all",
]

# One logger for the whole package: its name is what deployments filter on.
logger = logging.getLogger("iogate.jobs.dispatch")

DEFAULT_CONNECT_TIMEOUT = 2.0  # seconds for a whole connect, retries included
DEFAULT_PUBLISH_TIMEOUT = 5.0  # seconds for the broker to confirm one message
DEFAULT_RETRY_BACKOFF = 1.0  # seconds: ceiling of the first retry's full-jitter wait
RETRY_BACKOFF_MAX = 30.0  # seconds: ceiling of any retry's wait
PUBLISH_WINDOW = 64  # publishes awaiting their broker confirmation at once
CLOSE_TIMEOUT = 2.0  # seconds for a goodbye to a broker that may be gone


class State(enum.Enum):
    """Where a dispatcher is in its lifecycle: opened once, closed for good."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def retry_wait(failures: int, backoff: float) -> float:
    """Full-jitter wait before retrying a chunk whose handler failed ``failures`` times."""
    return backoff_delay(max(1, failures), initial=backoff, maximum=RETRY_BACKOFF_MAX)


def check_prefetch(prefetch: int) -> None:
    """ConfigError unless ``prefetch`` (chunks a consumer runs at once) is at least 1."""
    if prefetch < 1:
        raise ConfigError(f"prefetch must be at least 1, got {prefetch}")


def check_name(kind: str, name: str) -> None:
    """ConfigError unless ``name`` is a stream/queue name every broker accepts."""
    if not name or len(name) > 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise ConfigError(f"{kind} {name!r}: use 1 to 64 letters, digits, '_' or '-'")


async def publish_all(
    tasks: Sequence[ChunkTask], publish: Callable[[ChunkTask], Coroutine[Any, Any, None]]
) -> None:
    """``publish`` each task, ``PUBLISH_WINDOW`` at a time; the first failure wins."""
    for start in range(0, len(tasks), PUBLISH_WINDOW):
        async with asyncio.TaskGroup() as group:
            for task in tasks[start : start + PUBLISH_WINDOW]:
                group.create_task(publish(task))


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a TaskGroup's ExceptionGroup (or ``exc`` itself)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def finish(settle: Coroutine[Any, Any, None]) -> None:
    """Run ``settle`` to its end even when cancelled meanwhile (it has its own
    timeout): a chunk whose handler returned is acknowledged, not redone."""
    task = asyncio.ensure_future(settle)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def stop_all(running: set[asyncio.Task[None]]) -> None:
    """Cancel the handlers still running and wait until each has wound down."""
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(set(running))


async def close_quietly(closable: Any) -> None:
    """``closable.close()`` within ``CLOSE_TIMEOUT``; any failure ignored."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await closable.close()


class BrokerDispatcher:
    """What the JetStream and RabbitMQ dispatchers share: ``async with``, the
    error that names the broker without its password, and settling a message
    (ack, nak, reject) within ``publish_timeout``, where a lost reply only
    means a redelivery."""

    broker = "broker"  # how messages name it: "NATS", "RabbitMQ"
    url: str
    publish_timeout: float
    _shown_url: str

    async def open(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _error(self, message: str) -> JobError:
        return JobError(redact_text(message, [url_password(self.url) or ""]))

    async def _settle(self, reply: Awaitable[Any], task: ChunkTask | None = None) -> None:
        try:
            async with asyncio.timeout(self.publish_timeout):
                await reply
        except Exception as exc:
            what = f"job {task.job_id} chunk {task.chunk}" if task else "a message"
            logger.warning(
                "%s %s: could not settle %s (it will be redelivered): %r",
                self.broker,
                self._shown_url,
                what,
                exc,
            )
