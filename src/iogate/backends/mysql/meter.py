"""MySQL's result meter: what a result brings in, counted on the socket."""

from __future__ import annotations

import asyncio
import struct
from typing import cast

from iogate.backends.meter import NO_BYTE_CAP, ProtocolRelay

__all__ = ["ResultMeter"]

# What a received packet costs beyond its bytes once it is a row in Python (a
# tuple, then the dict it is answered as): without it, a million one-column
# rows would pass a budget they overrun ten times over in memory.
_PACKET_CHARGE = 256
# A packet header: a 3-byte little-endian length, then a sequence number.
_PACKET_HEADER = struct.Struct("<I").unpack_from
_PACKET_LENGTH = 0xFFFFFF
# Bytes of an answer the meter keeps before it reads packet headers.
_PARSE_AFTER = 64 * 1024


class ResultMeter(ProtocolRelay, asyncio.BufferedProtocol):
    """Between a connection's socket and asyncmy: what a result brings in.

    Installed as the transport's protocol in front of asyncmy's buffered
    one, whose buffer it hands out; armed with a budget around one
    statement. Each packet (a 4-byte header with a 3-byte length, then its
    payload) is charged in full as soon as its header arrives, plus
    :data:`_PACKET_CHARGE`: a packet that would take the result past its
    budget aborts the connection before its payload arrives, so asyncmy
    never grows its buffer for it.

    Reading headers costs a point query more than the query's own parsing,
    so the first :data:`_PARSE_AFTER` bytes of an answer are only kept: an
    answer that ends within them (nearly every one) is never parsed here;
    one that goes on is parsed from its first byte when it passes them.
    Disarmed, the meter costs one attribute test per socket read.
    """

    __slots__ = (
        "_head",
        "_kept",
        "_protocol",
        "_skip",
        "_transport",
        "_view",
        "budget",
        "spent",
        "tripped",
    )

    def __init__(self, transport: asyncio.Transport, protocol: asyncio.BufferedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._view: memoryview | None = None
        self._kept: bytes | None = b""  # the answer so far; None once parsing
        self._skip = 0  # bytes of the current packet still to come
        self._head = b""  # the start of a header cut by a read
        self.budget = NO_BYTE_CAP
        self.spent = 0
        self.tripped = False

    def arm(self, budget: int) -> None:
        """Count from the next byte, the first of the statement's answer."""
        self._kept = b""
        self._skip = 0
        self._head = b""
        self.spent = 0
        self.budget = budget

    def get_buffer(self, sizehint: int) -> memoryview:
        view = cast(memoryview, self._protocol.get_buffer(sizehint))
        self._view = view
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view, self._view = self._view, None
        if self.budget and view is not None:
            kept = self._kept
            if kept is None:
                self.spent += self._charge(view, nbytes)
            elif len(kept) + nbytes <= _PARSE_AFTER:
                self._kept = kept + view[:nbytes]
                self.spent += nbytes
            else:
                self._kept = None
                answer = kept + view[:nbytes]
                self.spent = self._charge(answer, len(answer))
            if self.spent > self.budget:
                self.trip()
                return
        self._protocol.buffer_updated(nbytes)

    def _charge(self, data: memoryview | bytes, size: int) -> int:
        """What the packets whose headers are in ``data[:size]`` cost."""
        position = self._skip
        head = self._head
        start = position
        extra = 0  # the packet whose header was cut, and the per-packet charges
        if head:
            missing = 4 - len(head)
            if size < missing:
                self._head = head + bytes(data[:size])
                return 0
            length = _PACKET_HEADER(head + bytes(data[:missing]))[0] & _PACKET_LENGTH
            self._head = b""
            position = start = missing + length
            extra = len(head) + missing + length + _PACKET_CHARGE
        packets = 0
        while position + 4 <= size:
            position += 4 + (_PACKET_HEADER(data, position)[0] & _PACKET_LENGTH)
            packets += 1
        if position < size:
            self._head = bytes(data[position:size])
            self._skip = 0
        else:
            self._skip = position - size
        return extra + position - start + packets * _PACKET_CHARGE
