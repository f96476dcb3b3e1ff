"""A runner whose broker connection drops takes chunks again once it is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from iogate import AsyncOperationOrchestrator
from iogate.jobs.dispatch import open_dispatcher
from iogate.jobs.model import JobError
from iogate.jobs.service import JobService
from iogate.jobs.store import SQLJobStore
from tests.brokers import BROKERS, drop_queue
from tests.conftest import port_open, unavailable
from tests.faults.proxy import FaultProxy


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["nats", "amqp"])
async def test_chunks_are_taken_again_after_the_broker_connection_drops(
    kind: str, tmp_path: Path
) -> None:
    url, port = BROKERS[kind]
    if not port_open(url, port):
        unavailable(f"no {kind} broker at {url}")
    queue = f"iogate-test-{uuid.uuid4().hex[:12]}"
    async with FaultProxy.for_url(url, port) as proxy, AsyncOperationOrchestrator() as orch:
        await orch.add_database_manager("lite", "sqlite", str(tmp_path / "t.db"))
        dispatcher = open_dispatcher(proxy.url(url), queue=queue, ack_wait=5)
        service = JobService(
            orch,
            SQLJobStore.from_url(f"sqlite:///{tmp_path / 'jobs.db'}"),
            dispatcher,
            run_chunks=True,
            resume=False,
        )
        await service.open()
        try:
            ops = [{"type": "database", "db_name": "lite", "query": "SELECT 1 AS one"}] * 10
            first = await service.submit(ops)
            assert (await first.wait(timeout=30)).done == 10
            await proxy.reset()  # every live connection to the broker is reset now
            await proxy.restore()  # new ones go through again
            started = time.monotonic()
            second = None
            while second is None:  # publishing reconnects once the broker is back
                try:
                    second = await service.submit(ops)
                except Exception:
                    assert time.monotonic() - started < 30
                    await asyncio.sleep(0.2)  # waiting for the client to reconnect
            assert (await second.wait(timeout=60)).done == 10
        finally:
            await service.aclose()
            await drop_queue(kind, queue, url)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["nats", "amqp"])
async def test_a_job_that_cannot_be_published_is_not_kept(kind: str, tmp_path: Path) -> None:
    url, port = BROKERS[kind]
    if not port_open(url, port):
        unavailable(f"no {kind} broker at {url}")
    queue = f"iogate-test-{uuid.uuid4().hex[:12]}"
    async with FaultProxy.for_url(url, port) as proxy, AsyncOperationOrchestrator() as orch:
        await orch.add_database_manager("lite", "sqlite", str(tmp_path / "t.db"))
        store = SQLJobStore.from_url(f"sqlite:///{tmp_path / 'jobs.db'}")
        service = JobService(
            orch,
            store,
            open_dispatcher(proxy.url(url), queue=queue, ack_wait=5),
            run_chunks=False,
        )
        await service.open()
        try:
            await proxy.blackhole()  # the broker stops answering
            ops = [{"type": "database", "db_name": "lite", "query": "SELECT 1 AS one"}] * 3
            started = time.monotonic()
            with pytest.raises(JobError):
                await service.submit(ops)
            assert time.monotonic() - started < 15  # publish and reconnect are bounded
            assert await store.unfinished() == []  # the job was deleted again
        finally:
            await proxy.restore()
            await service.aclose()
            await drop_queue(kind, queue, url)
