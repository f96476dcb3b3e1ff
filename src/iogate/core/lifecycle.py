"""The lifecycle every resource shares: opened once, closed once, never reopened.

``Lifecycle`` is the one copy of the state machine (httpx's ``ClientState``
shape) that the database managers, the API manager and seed 002's
``ExternalAPISession`` inherit (``DatabaseConnectionPool`` delegates to the
manager it wraps): a :class:`ResourceState`, ``async with``, an idempotent
``close()``/``aclose()``, a :class:`ResourceWarning` for an open resource
that is garbage-collected, and one opening shared by concurrent callers.

A subclass implements ``_open`` and ``_close``. Callers that need the
resource open call ``_ensure_open(deadline)``: the first starts the opening,
the others wait for the same one, each within its own deadline, and giving
up (or being cancelled) does not cancel it for the rest.
"""

from __future__ import annotations

import abc
import asyncio
import warnings
from types import TracebackType
from typing import Any, ClassVar, Self

from iogate.core.deadline import Deadline
from iogate.core.errors import ClosedError, DatabaseConnectionError, IogateError
from iogate.core.resource import ResourceState

__all__ = ["Lifecycle"]


class Lifecycle(abc.ABC):
    # An in-process resource holds nothing outside the process: no warning.
    warn_unclosed: ClassVar[bool] = True

    def __init__(self, *, name: str) -> None:
        self._name = name
        self.state = ResourceState.UNOPENED
        self._opening: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value
        self._renamed(value)

    def _renamed(self, name: str) -> None:
        """Hook for subclasses that label things (pools, metrics) by name."""
        return None

    async def open(self) -> None:
        """Open it; idempotent. Errors propagate as iogate errors."""
        if self.state is not ResourceState.OPEN:
            await self._ensure_open()

    async def _ensure_open(self, deadline: Deadline | None = None) -> None:
        """Open the resource if needed, waiting for it at most until ``deadline``.

        A caller whose deadline passes first gets a connection error
        (``_not_opened``); the opening goes on for the callers after it.
        """
        if self.state is ResourceState.OPEN:
            return
        if self.state is ResourceState.CLOSED or self._closing:
            raise ClosedError(f"{self.name}: {self._closed_noun} is closed and cannot be reopened")
        opening = self._opening
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open_once())
            opening.add_done_callback(self._opened)
            self._opening = opening
        timeout = None if deadline is None else deadline.remaining()
        if timeout is None:
            await asyncio.shield(opening)
            return
        wait = asyncio.timeout(timeout)
        try:
            async with wait:
                await asyncio.shield(opening)
        except TimeoutError:
            if not wait.expired():
                raise  # the opening's own error
            raise self._not_opened(timeout) from None

    _closed_noun: ClassVar[str] = "manager"

    async def _open_once(self) -> None:
        await self._open()
        self.state = ResourceState.OPEN

    def _opened(self, opening: asyncio.Task[None]) -> None:
        self._opening = None
        if not opening.cancelled():
            opening.exception()  # retrieved here too, in case nobody waited

    def _not_opened(self, timeout: float) -> IogateError:
        return DatabaseConnectionError(f"{self.name}: not connected within {timeout:.3g}s")

    async def close(self) -> None:
        """Close it; idempotent. An opening under way is cancelled."""
        if self.state is ResourceState.CLOSED:
            return
        self._closing = True
        opening = self._opening
        if opening is not None:
            opening.cancel()
            await asyncio.wait([opening])
        was_open = self.state is ResourceState.OPEN
        self.state = ResourceState.CLOSED
        if was_open:
            await self._close()

    async def aclose(self) -> None:
        await self.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Class attributes, not module globals: at interpreter exit a module's
    # globals may already be None when __del__ runs.
    _OPEN_STATE: ClassVar[ResourceState] = ResourceState.OPEN
    _warn: ClassVar[Any] = staticmethod(warnings.warn)

    def __del__(self) -> None:
        if self.warn_unclosed and getattr(self, "state", None) is self._OPEN_STATE:
            self._warn(
                f"{type(self).__name__} {self._name!r} was never closed",
                ResourceWarning,
                stacklevel=1,
            )

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...
