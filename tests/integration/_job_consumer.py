"""A chunk consumer in a process of its own, for tests/integration/test_job_dispatch.py.

``python -P _job_consumer.py URL QUEUE ACK_WAIT PREFETCH`` (``-P``: this
directory's ``http`` package must not shadow the standard library's) prints ``ready``, then
``got <message id>`` for each chunk it takes, and never finishes one: the
test SIGKILLs it while it holds them. It exits by itself after LIFETIME
seconds, so a test that dies first leaves nothing running.
"""

from __future__ import annotations

import asyncio
import sys

from iogate.jobs.dispatch import open_dispatcher
from iogate.jobs.model import ChunkTask

LIFETIME = 60.0


async def main(url: str, queue: str, ack_wait: float, prefetch: int) -> None:
    dispatcher = open_dispatcher(url, queue=queue, ack_wait=ack_wait)
    await dispatcher.open()
    never = asyncio.Event()

    async def hold(task: ChunkTask) -> None:
        print(f"got {task.message_id}", flush=True)
        await never.wait()

    print("ready", flush=True)
    try:
        async with asyncio.timeout(LIFETIME):
            await dispatcher.consume(hold, prefetch=prefetch)
    except TimeoutError:
        pass
    finally:
        await dispatcher.aclose()


if __name__ == "__main__":
    url, queue, ack_wait, prefetch = sys.argv[1:5]
    asyncio.run(main(url, queue, float(ack_wait), int(prefetch)))
