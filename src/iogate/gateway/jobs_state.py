"""The gateway's job service: started on first use, or at start-up to resume.

With the embedded default (SQLite store, no broker) the gateway runs job
chunks itself. Its store file is created by the first job, not by every
start, and a gateway whose store already exists (or that uses PostgreSQL or
a broker) starts the service at start-up, in the background, so unfinished
chunks of jobs submitted before a restart resume (embedded) and the broker
connection is ready (a broker or store that does not answer never holds
start-up: the first job request retries and answers 503 meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path

from starlette.requests import Request

from iogate.core.errors import IogateError
from iogate.gateway.settings import JobsSettings, OperationSettings
from iogate.jobs.model import JobError
from iogate.jobs.service import JobService
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.orchestrator.operations import load_operations

__all__ = ["GatewayJobs", "JobsDisabledError", "jobs_of", "jobs_to_read"]

logger = logging.getLogger("iogate.jobs")


class JobsDisabledError(JobError):
    """``[jobs] enabled = false``: the job routes answer 404."""


# The newest GatewayJobs of this process. A config reload builds a new app
# generation while the old one still drains: the new one's embedded runner
# must not resume chunks the old runner is still running.
_latest: GatewayJobs | None = None


class GatewayJobs:
    """One app's job service, opened once."""

    def __init__(
        self,
        settings: JobsSettings,
        orchestrator: AsyncOperationOrchestrator,
        max_params: int,
        operations: Mapping[str, OperationSettings] | None = None,
    ) -> None:
        global _latest
        self.settings = settings
        self.orchestrator = orchestrator
        self.max_params = max_params
        self.operations = operations or {}
        self._service: JobService | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.closed = asyncio.Event()
        self._warmup: asyncio.Task[None] | None = None
        self._resume: asyncio.Task[None] | None = None
        previous = _latest
        self._predecessor = previous if previous is not None and not previous._closed else None
        _latest = self

    @property
    def embedded(self) -> bool:
        return not self.settings.broker

    def sqlite_path(self) -> Path | None:
        store = self.settings.store
        return Path(store.removeprefix("sqlite:///")) if store.startswith("sqlite:///") else None

    def start_in_background(self) -> None:
        """At start-up: open now when there is something to resume or connect to."""
        path = self.sqlite_path()
        if not self.settings.enabled or (path is not None and not path.exists() and self.embedded):
            return
        self._warmup = asyncio.create_task(self._warm(), name="iogate-jobs-start")

    async def _warm(self) -> None:
        try:
            await self.service()
        except IogateError as exc:
            logger.warning("job service not started yet (retried on the next job request): %s", exc)

    def nothing_recorded(self) -> bool:
        """True while the embedded store does not exist: no job to read yet."""
        path = self.sqlite_path()
        return self._service is None and path is not None and not path.exists()

    async def service(self) -> JobService:
        if self._service is not None:
            return self._service
        async with self._lock:
            if self._service is None:
                if self._closed:
                    raise JobError("the gateway is shutting down")
                if not self.settings.enabled:
                    raise JobsDisabledError("durable jobs are disabled ([jobs] enabled = false)")
                # A chunk resumed after a restart may run named operations.
                load_operations(self.orchestrator, self.operations)
                predecessor = self._predecessor
                waiting = self.embedded and predecessor is not None and not predecessor._closed
                self._service = await JobService.start(
                    self.orchestrator,
                    store=self.settings.store,
                    broker=self.settings.broker,
                    queue=self.settings.queue,
                    ack_wait=self.settings.ack_wait,
                    chunk_size=self.settings.chunk_size,
                    max_operations=self.settings.max_operations,
                    max_params=self.max_params,
                    runner_chunks=self.settings.worker_chunks,
                    resume=not waiting,
                )
                if waiting and predecessor is not None:
                    self._resume = asyncio.create_task(
                        self._resume_after(predecessor, self._service), name="iogate-jobs-resume"
                    )
            return self._service

    async def _resume_after(self, predecessor: GatewayJobs, service: JobService) -> None:
        """Resume unfinished chunks once the previous generation's runner stopped."""
        await predecessor.closed.wait()
        try:
            await service.resume()
        except IogateError as exc:
            logger.warning("resuming job chunks after the reload failed: %s", exc)

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._resume,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._warmup is not None:
            self._warmup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmup
        async with self._lock:
            if self._service is not None:
                await self._service.aclose()
                self._service = None
        self.closed.set()


def _holder(request: Request) -> GatewayJobs:
    holder: GatewayJobs | None = getattr(request.app.state, "jobs", None)
    if holder is None:
        raise JobError("durable jobs are not set up in this app")
    return holder


async def jobs_of(request: Request) -> JobService:
    """The app's job service, started if need be (JobError when it cannot be)."""
    return await _holder(request).service()


async def jobs_to_read(request: Request) -> JobService | None:
    """:func:`jobs_of`, or None when no job was ever recorded (the embedded
    store does not exist yet): reading a job creates no store file."""
    holder = _holder(request)
    if holder.settings.enabled and holder.nothing_recorded():
        return None
    return await holder.service()
