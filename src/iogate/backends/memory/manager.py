"""The ``memory`` database type: a :class:`MemoryStore` behind the manager API.

It is the embedded default's ``cache`` and stands in for a Redis wherever one
is expected: the same ``execute_query(key, {"operation": ...})`` calls, the
same data shapes (see :mod:`iogate.backends.kv`). Every operation runs
synchronously between two awaits, so each one, and each
``pipeline``/``transaction`` as a whole, is atomic with respect to other
tasks.

``on_delete``, when set, hears the keys of every ``delete`` run through the
manager (alone or in a pipeline or transaction): the gateway relays them so
other processes drop their copies (``iogate.gateway.shared_state``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, NoReturn

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.backends.kv import (
    Command,
    batch_result,
    check_read_only,
    check_unreserved,
    parse_command,
    refuse_writes,
)
from iogate.backends.memory.store import DEFAULT_MAX_KEYS, MemoryStore
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, InvalidRequestError, IogateError
from iogate.core.params import Params
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = ["AsyncMemoryManager"]

logger = logging.getLogger("iogate.memory")


class AsyncMemoryManager(AsyncDatabaseManager):
    """The ``memory`` database type: a :class:`MemoryStore` behind the manager API.

    ``conn_string`` is accepted for symmetry with the other types
    (``"memory://"`` or empty) and otherwise ignored. ``read_only=True``
    refuses every operation that writes (``forbidden_statement``). There is
    no pool: ``pool_stats()`` is empty, the keys and evictions are in
    ``pool_details()``.
    """

    backend = "memory"
    warn_unclosed = False  # holds nothing outside the process

    def __init__(
        self,
        conn_string: str = "",
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
        read_only: bool = False,
    ) -> None:
        super().__init__(name=name)
        if conn_string not in ("", "memory://", "memory:"):
            raise ConfigError(f"a memory database takes no connection string, got {conn_string!r}")
        self.store = MemoryStore(clock=clock, max_keys=max_keys)
        self.read_only = read_only
        # Told (name, keys) after each delete; never for what store.apply does directly.
        self.on_delete: Callable[[str, Sequence[str]], None] | None = None

    def __repr__(self) -> str:
        read_only = " read_only" if self.read_only else ""
        return (
            f"<AsyncMemoryManager {self.name!r}{read_only} state={self.state.value} "
            f"keys={len(self.store)} max_keys={self.store.max_keys}>"
        )

    @property
    def target(self) -> str:
        return "memory://"

    def __del__(self) -> None:
        # Nothing leaks when a memory store is dropped unclosed (no sockets,
        # no threads), so no ResourceWarning: the process-wide default cache
        # lives until exit without an owner to close it.
        return None

    async def _open(self) -> None:
        return None

    async def _close(self) -> None:
        self.store.clear()

    async def _execute(
        self,
        query: str,
        params: Params,
        *,
        deadline: Deadline,
        read_only: bool,
        max_rows: int | None,
        guard: Access | None = None,
    ) -> Result:
        command = parse_command(query, params)
        if read_only or guard is Access.READ:
            check_read_only(command)
        if self.read_only:
            refuse_writes(command, self.name)
        if guard is not None:
            check_unreserved(command)  # untrusted: not iogate's own keys
        if command.op in ("pipeline", "transaction"):
            result = batch_result(command, self.store.apply_many(command))
        else:
            try:
                result = Result.ok(self.store.apply(command), operation=command.op)
            except IogateError as exc:
                result = Result.from_exception(exc, operation=command.op)
        if self.on_delete is not None:
            self._announce_deletes(command)
        return result

    def _announce_deletes(self, command: Command) -> None:
        """Tell ``on_delete`` the keys ``command`` deleted (or tried to: a miss is news too)."""
        nested = command.op in ("pipeline", "transaction")
        keys = [
            key
            for sub in (command.commands if nested else (command,))
            if sub.op == "delete"
            for key in sub.keys
        ]
        if keys and self.on_delete is not None:
            try:
                self.on_delete(self.name, keys)
            except Exception:  # a listener must not fail the delete
                logger.exception("memory database %r: on_delete listener failed", self.name)

    def _transaction(
        self, *, read_only: bool, deadline: Deadline, guard: Access | None = None
    ) -> AbstractAsyncContextManager[Transaction]:
        return _unsupported_transaction()

    async def _ping(self) -> None:
        return None

    def pool_details(self) -> dict[str, int]:
        return {
            "keys": len(self.store),
            "max_keys": self.store.max_keys,
            "evictions": self.store.evictions,
        }


@asynccontextmanager
async def _unsupported_transaction() -> AsyncIterator[NoReturn]:
    raise InvalidRequestError(
        "key-value stores run transactions as one operation: "
        '{"operation": "transaction", "operations": [...]}'
    )
    yield  # pragma: no cover - unreachable, makes this a generator


if TYPE_CHECKING:
    from iogate.core.resource import Resource

    _: Resource = AsyncMemoryManager()
