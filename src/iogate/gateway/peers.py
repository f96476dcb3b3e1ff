"""What gateway processes tell each other, and what each does on hearing it.

``PeerLink`` turns a local event (a memory-cache delete, a breaker opening)
into a message, and a peer's message into the local action (delete the same
keys, open the same breaker under ``CircuitBreaker.open_for_peer``'s rules).
It knows nothing of the transport: :class:`~iogate.gateway.shared_state.SharedState`
carries the messages through Redis pub/sub.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from iogate.backends.kv import RESERVED_PREFIX, parse_command
from iogate.backends.memory import AsyncMemoryManager
from iogate.core.errors import IogateError

if TYPE_CHECKING:
    from iogate.orchestrator.orchestrator import AsyncOperationOrchestrator
    from iogate.resilience.breaker import CircuitBreaker

__all__ = ["BREAKER_CHANNEL", "INVALIDATE_CHANNEL", "PEER_MAX_AGE", "PeerLink"]

logger = logging.getLogger("iogate.gateway.shared_state")

INVALIDATE_CHANNEL = "iogate:invalidate"
BREAKER_CHANNEL = "iogate:breaker"
# A peer's breaker opening older than this (wall clock, seconds) is ignored.
PEER_MAX_AGE = 1.0
_PEER_MAX_SKEW = 1.0  # a message "from the future" by more is ignored too
_TAG_PREFIX = f"{RESERVED_PREFIX}tag:"
_MESSAGE_VERSION = 1

Send = Callable[[str, dict[str, Any]], None]
"""How a PeerLink hands a message (channel, body) to its transport."""


class PeerLink:
    """One process's side of the invalidation and breaker messages; no I/O.

    ``attach(orchestrator)`` hooks every memory database's ``on_delete`` and
    every API breaker's ``on_open`` to ``send(channel, message)``;
    ``receive(channel, payload)`` applies what a peer sent. ``clock`` is the
    wall clock messages are stamped with (peers on other machines compare it).
    """

    def __init__(
        self,
        send: Send,
        *,
        origin: str | None = None,
        scope: str = "0",
        clock: Callable[[], float] = time.time,
        max_age: float = PEER_MAX_AGE,
    ) -> None:
        self._send = send
        self.origin = origin or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scope = scope
        self._clock = clock
        self.max_age = max_age
        self._orchestrator: AsyncOperationOrchestrator | None = None
        self.counts: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<PeerLink {self.origin!r} {dict(self.counts)}>"

    def attach(self, orchestrator: AsyncOperationOrchestrator) -> None:
        self._orchestrator = orchestrator
        for manager in orchestrator.databases.values():
            if isinstance(manager, AsyncMemoryManager):
                manager.on_delete = self.deleted
        for breaker in _breakers(orchestrator).values():
            breaker.on_open = self.opened

    def detach(self) -> None:
        orchestrator, self._orchestrator = self._orchestrator, None
        if orchestrator is None:
            return
        for manager in orchestrator.databases.values():
            if isinstance(manager, AsyncMemoryManager) and manager.on_delete == self.deleted:
                manager.on_delete = None
        for breaker in _breakers(orchestrator).values():
            if breaker.on_open == self.opened:
                breaker.on_open = None

    # -- outgoing ------------------------------------------------------------------

    def deleted(self, database: str, keys: Sequence[str]) -> None:
        """A memory database's ``on_delete``: tell the peers."""
        self.counts["invalidations_sent"] += 1
        self._send(INVALIDATE_CHANNEL, self._stamp({"database": database, "keys": list(keys)}))

    def opened(self, breaker: CircuitBreaker) -> None:
        """A breaker's ``on_open``: tell the peers for how long it opened."""
        self.counts["openings_sent"] += 1
        message = {"resource": breaker.name, "open_for": breaker.retry_after()}
        self._send(BREAKER_CHANNEL, self._stamp(message))

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "v": _MESSAGE_VERSION,
            "origin": self.origin,
            "scope": self.scope,
            "sent_at": self._clock(),
            **body,
        }

    # -- incoming ------------------------------------------------------------------

    def receive(self, channel: str, payload: str | bytes) -> None:
        """Apply one peer message; ours, another scope's or a malformed one is ignored."""
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            message = None
        if not isinstance(message, dict) or message.get("v") != _MESSAGE_VERSION:
            self.counts["malformed"] += 1
            return
        if message.get("origin") == self.origin or message.get("scope") != self.scope:
            return
        orchestrator = self._orchestrator
        if orchestrator is None:
            return
        try:
            if channel == INVALIDATE_CHANNEL:
                self._invalidate(orchestrator, message)
            elif channel == BREAKER_CHANNEL:
                self._open(orchestrator, message)
        except (IogateError, KeyError, TypeError, ValueError):  # fields of the wrong shape
            self.counts["malformed"] += 1

    def _invalidate(
        self, orchestrator: AsyncOperationOrchestrator, message: dict[str, Any]
    ) -> None:
        manager = orchestrator.databases.get(str(message["database"]))
        keys = [str(key) for key in message["keys"]]
        if not isinstance(manager, AsyncMemoryManager) or not keys:
            return
        store = manager.store
        doomed = list(keys)
        for key in keys:
            if key.startswith(_TAG_PREFIX):  # a tag: the entries *our* set lists
                with contextlib.suppress(IogateError):  # not a set here: nothing to add
                    doomed += store.apply(parse_command(key, {"operation": "smembers"}))
        # Straight to the store: a peer's delete is not announced again.
        store.apply(parse_command(doomed[0], {"operation": "delete", "keys": doomed}))
        self.counts["invalidations_applied"] += 1

    def _open(self, orchestrator: AsyncOperationOrchestrator, message: dict[str, Any]) -> None:
        breaker = _breakers(orchestrator).get(str(message["resource"]))
        if breaker is None:
            return
        age = self._clock() - float(message["sent_at"])
        if not -_PEER_MAX_SKEW <= age <= self.max_age:
            self.counts["openings_stale"] += 1
            return
        if breaker.open_for_peer(float(message["open_for"]) - max(age, 0.0)):
            self.counts["openings_honoured"] += 1
            logger.info(
                "%s: circuit opened because gateway %s opened its own",
                breaker.name,
                message["origin"],
            )
        else:
            self.counts["openings_ignored"] += 1

    def drop_cached_entries(self) -> int:
        """Drop iogate's own entries from every memory database (missed invalidations)."""
        orchestrator = self._orchestrator
        if orchestrator is None:
            return 0
        return sum(
            manager.store.drop_prefix(RESERVED_PREFIX)
            for manager in orchestrator.databases.values()
            if isinstance(manager, AsyncMemoryManager)
        )


def _breakers(orchestrator: AsyncOperationOrchestrator) -> dict[str, CircuitBreaker]:
    found: dict[str, CircuitBreaker] = {}
    for name, manager in orchestrator.apis.items():
        if manager.breaker is not None:
            found[name] = manager.breaker
    return found
