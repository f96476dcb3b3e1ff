"""PostgreSQL's result meter: what a result brings in, counted on the socket."""

from __future__ import annotations

import asyncio
import struct

from iogate.backends.meter import NO_BYTE_CAP, ProtocolRelay

__all__ = ["ResultMeter"]

# What a message costs beyond its bytes once it is a row in Python (a Record,
# then the dict it is answered as): without it, a million one-column rows
# would pass a budget they overrun ten times over in memory.
_MESSAGE_CHARGE = 256
_MESSAGE_LENGTH = struct.Struct("!I").unpack_from


class ResultMeter(ProtocolRelay, asyncio.Protocol):
    """Between a connection's socket and asyncpg: what a result brings in.

    Installed as the transport's protocol in front of asyncpg's (which it
    feeds); armed with a budget around one statement, past which it aborts
    the connection before asyncpg has buffered or decoded the rest.

    With ``by_message``, it reads each message's header (a type byte and a
    4-byte length) as it arrives and charges the whole message then, plus
    :data:`_MESSAGE_CHARGE`: a message that would pass the budget aborts
    the connection before its payload is read. That is for results with no
    row cap, where a million tiny rows must cost what they take in Python.
    With a row cap (the server sends at most ``max_rows + 1`` rows) it
    counts bytes alone, which is cheaper, and a huge row is cut once the
    budget's worth of it has arrived. Disarmed, it costs one attribute test
    per socket read.
    """

    __slots__ = (
        "_by_message",
        "_head",
        "_protocol",
        "_skip",
        "_transport",
        "budget",
        "spent",
        "tripped",
    )

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._by_message = False
        self._skip = 0  # bytes of the current message still to come
        self._head = b""  # the start of a header cut by a read
        self.budget = NO_BYTE_CAP
        self.spent = 0
        self.tripped = False

    def arm(self, budget: int, *, by_message: bool) -> None:
        """Count from the next byte, the first of the statement's answer."""
        self._by_message = by_message
        self._skip = 0
        self._head = b""
        self.spent = 0
        self.budget = budget

    def data_received(self, data: bytes) -> None:
        if self.budget:
            self.spent += self._charge(data) if self._by_message else len(data)
            if self.spent > self.budget:
                self.trip()
                return
        self._protocol.data_received(data)

    def _charge(self, data: bytes) -> int:
        """What the messages whose headers are in ``data`` cost."""
        size = len(data)
        charge = 0
        position = self._skip
        head = self._head
        if head:
            missing = 5 - len(head)
            if size < missing:
                self._head = head + data
                return 0
            length = _MESSAGE_LENGTH(head + data[:missing], 1)[0]
            self._head = b""
            position = missing + length - 4
            charge = 1 + length + _MESSAGE_CHARGE
        while position + 5 <= size:
            length = _MESSAGE_LENGTH(data, position + 1)[0]
            position += 1 + length
            charge += 1 + length + _MESSAGE_CHARGE
        if position < size:
            self._head = data[position:]
            self._skip = 0
        else:
            self._skip = position - size
        return charge
