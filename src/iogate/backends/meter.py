"""What the PostgreSQL and MySQL result meters share: sitting in front of a
driver's protocol on its transport.

A meter is installed once per connection as the transport's protocol and
passes everything on to the driver's own protocol; each backend's subclass
counts what a result brings in by its wire format (PostgreSQL messages,
MySQL packets) and calls :meth:`trip` past its budget, which aborts the
connection before the driver buffers the rest. Reaching the transport is
the one use of a driver's private attribute (``_transport``), kept here.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

__all__ = ["NO_BYTE_CAP", "ProtocolRelay"]

NO_BYTE_CAP = 0

R = TypeVar("R", bound="ProtocolRelay")


class ProtocolRelay:
    """Installed between a transport and a driver's protocol (a mixin for
    an ``asyncio.Protocol`` or ``BufferedProtocol`` subclass, which holds
    these attributes in its own ``__slots__``)."""

    _transport: asyncio.Transport
    _protocol: Any
    budget: int
    tripped: bool

    @classmethod
    def of(cls: type[R], raw: Any) -> R:
        """``raw``'s meter, put in front of its protocol on first use."""
        transport: asyncio.Transport = raw._transport
        current: Any = transport.get_protocol()
        if type(current) is cls:
            meter: R = current
            return meter
        meter = cls(transport, current)  # type: ignore[call-arg]
        transport.set_protocol(meter)  # type: ignore[arg-type]
        return meter

    def trip(self) -> None:
        """Past the budget: stop counting and drop the connection."""
        self.budget = NO_BYTE_CAP
        self.tripped = True
        self._transport.abort()

    def eof_received(self) -> bool | None:
        result: bool | None = self._protocol.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()
