"""Fakes shared by the tests: time that moves only when a test moves it,
a sleep that records instead of waiting, and connections that are numbers.

They stand in for iogate's injectable seams (``clock=``, ``sleep=``,
``connect=``/``close=``/``check=``), never for a driver: tests that talk to a
database or an upstream talk to a real one.
"""

from __future__ import annotations

import asyncio

__all__ = ["WALL_EPOCH", "ConnectionFactory", "FakeClock", "RecordingSleep"]

# What FakeClock.wall() adds to the clock's reading: a plausible time.time().
WALL_EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock for ``clock=`` seams (``time.monotonic`` or ``time.time`` shaped).

    It reads ``now``, which starts at ``start`` and changes only when a test
    sets it or calls :meth:`advance`.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __repr__(self) -> str:
        return f"<FakeClock now={self.now}>"

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wall(self) -> float:
        """The same instant as wall-clock seconds (``time.time()``), moving with ``now``."""
        return WALL_EPOCH + self.now


class RecordingSleep:
    """A sleep for ``sleep=`` seams: records each wait and returns at once.

    Given a ``clock``, each wait moves it on by the seconds asked for, so
    code that sleeps and then reads the clock sees the time pass. Like a real
    sleep it lets the other tasks run before returning.
    """

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self.clock = clock

    def __repr__(self) -> str:
        return f"<RecordingSleep waits={self.waits}>"

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds
        await asyncio.sleep(0)


class ConnectionFactory:
    """``connect``/``close``/``check`` for a ``Pool[int]``: connections are numbers.

    Connections are numbered from 1 in the order opened. A number in ``dead``
    fails its check; with ``check_hangs`` a check never returns.
    """

    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[int] = []
        self.checked: list[int] = []
        self.dead: set[int] = set()
        self.check_hangs = False

    def __repr__(self) -> str:
        return f"<ConnectionFactory opened={self.opened} closed={self.closed}>"

    async def connect(self) -> int:
        self.opened += 1
        return self.opened

    async def close(self, conn: int) -> None:
        self.closed.append(conn)

    async def check(self, conn: int) -> bool:
        self.checked.append(conn)
        if self.check_hangs:
            await asyncio.Event().wait()
        return conn not in self.dead
