"""``iogate worker``: run chunks of durable jobs taken from the broker.

Any number of workers, on any machine, with the same config file as the
gateways: the same resources, ``[jobs] store`` (PostgreSQL when they are on
several machines) and ``[jobs] broker``. Each takes up to ``[jobs]
worker_chunks`` chunks at once (``--chunks``), runs them, stores every
result and only then acknowledges the chunk's message. SIGTERM or SIGINT
stops it at once: a chunk in flight is not acknowledged, so the broker
hands it to another worker, which runs only the operations with no stored
result. Exit status 0 after a signal, 2 when the config cannot be used, 3
when the store or the broker cannot be reached at start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

from iogate.core.errors import IogateError
from iogate.gateway.settings import Settings

__all__ = ["EXIT_STARTUP", "run_worker"]

logger = logging.getLogger("iogate.worker")

EXIT_OK = 0
EXIT_STARTUP = 3
STATUS_EVERY = 30.0  # seconds between "still running" log lines


async def run_worker(settings: Settings, *, chunks: int | None = None) -> int:
    """Run until SIGTERM/SIGINT; the exit status."""
    from iogate.gateway.app import build_orchestrator
    from iogate.jobs.dispatch import open_dispatcher
    from iogate.jobs.service import JobService
    from iogate.jobs.store import SQLJobStore
    from iogate.orchestrator.operations import load_operations

    jobs = settings.jobs
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    orchestrator = build_orchestrator(settings)
    async with orchestrator:
        load_operations(orchestrator, settings.operations)
        service = JobService(
            orchestrator,
            SQLJobStore.from_url(jobs.store),
            open_dispatcher(jobs.broker, queue=jobs.queue, ack_wait=jobs.ack_wait),
            run_chunks=True,
            resume=False,  # the broker keeps unfinished chunks
            chunk_size=jobs.chunk_size,
            max_operations=jobs.max_operations,
            max_params=settings.gateway.max_params,
            runner_chunks=chunks or jobs.worker_chunks,
        )
        try:
            await service.open()
        except IogateError as exc:
            logger.error("worker cannot start: %s", exc)
            return EXIT_STARTUP
        logger.info(
            "iogate worker taking up to %d chunk(s) at once from %s",
            service.runner_chunks,
            jobs.broker or "this process",
        )
        started = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    async with asyncio.timeout(STATUS_EVERY):
                        await stop.wait()
                except TimeoutError:
                    logger.info(
                        "worker: %d chunk(s), %d operation(s) run in %.0fs",
                        service.runner.chunks_run,
                        service.runner.operations_run,
                        time.monotonic() - started,
                    )
        finally:
            await service.aclose()
        logger.info(
            "worker stopped after %d chunk(s), %d operation(s)",
            service.runner.chunks_run,
            service.runner.operations_run,
        )
    return EXIT_OK
