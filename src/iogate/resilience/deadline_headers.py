"""Deadlines on the wire: ``Request-Timeout`` and gRPC's ``grpc-timeout``.

A client may say how long it will wait; a service that calls another passes
on what is left, so every hop of a chain works to the same end point instead
of each starting a fresh timeout of its own. Two forms are understood:

* ``Request-Timeout: 2.5`` -- seconds, a decimal number (digits, optionally
  a point and more digits; no sign, exponent or spaces inside);
* ``grpc-timeout: 500m`` -- the gRPC over HTTP/2 form: at most 8 digits and
  a unit, ``H`` hours, ``M`` minutes, ``S`` seconds, ``m`` milliseconds,
  ``u`` microseconds, ``n`` nanoseconds.

``parse_timeout`` reads one value (``ValueError`` naming the header when it
is malformed or negative; a huge value is returned as is, for the caller to
cap); ``format_timeout`` writes the time left in a header's form, rounded
down so that a hop never claims more time than it has. ``ClientDeadline`` is
a ``Deadline`` that remembers which headers the client used, so the calls
made on its behalf forward it in the same form.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from iogate.core.deadline import Deadline

__all__ = [
    "DEADLINE_HEADERS",
    "GRPC_TIMEOUT",
    "REQUEST_TIMEOUT",
    "ClientDeadline",
    "format_timeout",
    "parse_timeout",
]

REQUEST_TIMEOUT = "Request-Timeout"
GRPC_TIMEOUT = "grpc-timeout"
# Lower-case names, as they arrive in an ASGI scope, mapped to their spelling.
DEADLINE_HEADERS = {REQUEST_TIMEOUT.lower(): REQUEST_TIMEOUT, GRPC_TIMEOUT: GRPC_TIMEOUT}

_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_GRPC = re.compile(r"(\d{1,8})([HMSmun])", re.ASCII)
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Finest unit first: gRPC's encoders pick the finest unit whose count fits
# in 8 digits, so precision is kept for short deadlines.
_GRPC_ENCODE = (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60), ("H", 1 / 3600))
_GRPC_MAX = 99_999_999


def parse_timeout(name: str, value: str) -> float:
    """Seconds from a deadline header's value; ``ValueError`` when malformed."""
    text = value.strip()
    if name.lower() == GRPC_TIMEOUT:
        match = _GRPC.fullmatch(text)
        if match is None:
            raise ValueError(
                f"{GRPC_TIMEOUT} must be 1 to 8 digits and a unit (H, M, S, m, u or n), "
                "such as 500m"
            )
        return int(match.group(1)) * _GRPC_UNITS[match.group(2)]
    if _SECONDS.fullmatch(text) is None:
        raise ValueError(f"{REQUEST_TIMEOUT} must be a non-negative number of seconds, such as 2.5")
    return float(text)  # inf for absurd lengths: the caller caps it


def format_timeout(name: str, seconds: float) -> str:
    """``seconds`` (at least 0) in the header's form, rounded down."""
    if seconds < 0.0:
        seconds = 0.0
    if name != REQUEST_TIMEOUT and name.lower() == GRPC_TIMEOUT:
        for unit, per_second in _GRPC_ENCODE:
            count = math.floor(seconds * per_second)
            if count <= _GRPC_MAX:
                return f"{count}{unit}"
        return f"{_GRPC_MAX}H"
    # Whole milliseconds, cut rather than rounded (this runs per attempt).
    return f"{int(seconds * 1000) / 1000:.3f}"


class ClientDeadline(Deadline):
    """A deadline that came in ``headers``; calls made for it forward it in those forms."""

    __slots__ = ("headers",)

    def __init__(
        self,
        budget: float | None,
        *,
        headers: tuple[str, ...],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(budget, clock=clock)
        self.headers = headers
