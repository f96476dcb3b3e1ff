"""An in-process key-value store with Redis's operations and TTL semantics.

It is the embedded default's ``cache`` and stands in for a Redis wherever one
is expected: the same ``execute_query(key, {"operation": ...})`` calls, the
same data shapes (see :mod:`iogate.backends.kv`), the same error text for a
wrong type. Every operation runs synchronously between two awaits, so each
one, and each ``pipeline``/``transaction`` as a whole, is atomic with respect
to other tasks.

Expiry is exact on access (an expired key is never returned) and time comes
from an injectable ``clock``. ``on_delete``, when set, hears the keys of every
``delete`` run through the manager (alone or in a pipeline or transaction):
the gateway relays them so other processes drop their copies
(``iogate.gateway.shared_state``). Memory is bounded by ``max_keys``: when full,
expired keys are purged first, then the least recently used key is evicted
(Redis's ``allkeys-lru``, done exactly with an ordered dict).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NoReturn

from iogate.backends.base import AsyncDatabaseManager, Transaction
from iogate.backends.kv import (
    Command,
    batch_result,
    check_read_only,
    check_unreserved,
    parse_command,
)
from iogate.core.deadline import Deadline
from iogate.core.errors import ConfigError, InvalidRequestError, IogateError, QueryError
from iogate.core.params import Params
from iogate.core.result import Result
from iogate.core.sqlguard import Access

__all__ = ["DEFAULT_MAX_KEYS", "AsyncMemoryManager", "MemoryStore"]

logger = logging.getLogger("iogate.memory")

DEFAULT_MAX_KEYS = 100_000
_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
_NOT_INTEGER = "ERR value is not an integer or out of range"

Value = str | dict[str, str] | deque[str] | set[str]


class MemoryStore:
    """The data structures and the operations on them; no I/O, no asyncio."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys}")
        self._clock = clock
        self.max_keys = max_keys
        self._data: OrderedDict[str, Value] = OrderedDict()
        self._expires: dict[str, float] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self._expires.clear()

    def drop_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``; the number removed."""
        keys = [key for key in self._data if key.startswith(prefix)]
        for key in keys:
            self._remove(key)
        return len(keys)

    def apply(self, command: Command) -> Any:
        """Run one command; raises QueryError as Redis would answer an error."""
        return _HANDLERS[command.op](self, command)

    def apply_many(self, command: Command) -> list[Any]:
        outcomes: list[Any] = []
        for sub in command.commands:
            try:
                outcomes.append(self.apply(sub))
            except QueryError as exc:
                outcomes.append(exc)
        return outcomes

    # -- bookkeeping ---------------------------------------------------------------

    def _lookup(self, key: str) -> Value | None:
        value = self._data.get(key)
        if value is None:
            return None
        expires_at = self._expires.get(key)
        if expires_at is not None and expires_at <= self._clock():
            self._remove(key)
            return None
        self._data.move_to_end(key)
        return value

    def _typed(self, key: str, kind: type[Any]) -> Any:
        value = self._lookup(key)
        if value is not None and not isinstance(value, kind):
            raise QueryError(_WRONGTYPE)
        return value

    def _store(self, key: str, value: Value) -> None:
        if key not in self._data and len(self._data) >= self.max_keys:
            self._make_room()
        self._data[key] = value
        self._data.move_to_end(key)

    def _remove(self, key: str) -> bool:
        self._expires.pop(key, None)
        return self._data.pop(key, None) is not None

    def _drop_if_empty(self, key: str, value: Value) -> None:
        # Redis deletes a hash/list/set once its last element is gone.
        if not value:
            self._remove(key)

    def _make_room(self) -> None:
        now = self._clock()
        for key in [k for k, at in self._expires.items() if at <= now]:
            self._remove(key)
        while len(self._data) >= self.max_keys:
            oldest = next(iter(self._data))
            self._remove(oldest)
            self.evictions += 1

    # -- strings -------------------------------------------------------------------

    def _op_get(self, command: Command) -> str | None:
        value = self._lookup(command.key)  # _typed, inlined: the most common command
        if value is None or isinstance(value, str):
            return value
        raise QueryError(_WRONGTYPE)

    def _op_set(self, command: Command) -> bool:
        exists = self._lookup(command.key) is not None
        if (command.flag == "NX" and exists) or (command.flag == "XX" and not exists):
            return False
        self._store(command.key, command.value)
        if command.ttl is None:
            self._expires.pop(command.key, None)
        else:
            self._expires[command.key] = self._clock() + command.ttl
        return True

    def _op_delete(self, command: Command) -> int:
        return sum(1 for key in command.keys if self._lookup(key) is not None and self._remove(key))

    def _op_exists(self, command: Command) -> int:
        return sum(1 for key in command.keys if self._lookup(key) is not None)

    def _op_expire(self, command: Command) -> bool:
        if self._lookup(command.key) is None or command.ttl is None:
            return False
        new_at = self._clock() + command.ttl
        current = self._expires.get(command.key)
        # A key without a TTL counts as infinite for GT/LT, as in Redis.
        refused = {
            "NX": current is not None,
            "XX": current is None,
            "GT": current is None or new_at <= current,
            "LT": current is not None and new_at >= current,
        }
        if command.flag is not None and refused[command.flag]:
            return False
        self._expires[command.key] = new_at
        return True

    def _op_ttl(self, command: Command) -> int:
        if self._lookup(command.key) is None:
            return -2
        expires_at = self._expires.get(command.key)
        if expires_at is None:
            return -1
        # Redis rounds the remaining milliseconds to the nearest second.
        return int((expires_at - self._clock()) + 0.5)

    def _op_incrby(self, command: Command) -> int:
        current = self._typed(command.key, str)
        try:
            number = int(current) if current is not None else 0
        except ValueError:
            raise QueryError(_NOT_INTEGER) from None
        number += command.amount
        if not -(2**63) <= number < 2**63:
            raise QueryError("ERR increment or decrement would overflow")
        self._store(command.key, str(number))
        return number

    _op_incr = _op_incrby

    def _op_mget(self, command: Command) -> list[str | None]:
        out: list[str | None] = []
        for key in command.keys:
            value = self._lookup(key)
            out.append(value if isinstance(value, str) else None)
        return out

    def _op_mset(self, command: Command) -> bool:
        for key, value in command.mapping:
            self._store(key, value)
            self._expires.pop(key, None)
        return True

    def _op_publish(self, command: Command) -> int:
        return 0  # no subscribers in process

    # -- hashes --------------------------------------------------------------------

    def _op_hget(self, command: Command) -> str | None:
        value: dict[str, str] | None = self._typed(command.key, dict)
        return None if value is None else value.get(command.value)

    def _op_hset(self, command: Command) -> int:
        value: dict[str, str] | None = self._typed(command.key, dict)
        if value is None:
            value = {}
            self._store(command.key, value)
        added = sum(1 for name, _ in command.mapping if name not in value)
        value.update(command.mapping)
        return added

    def _op_hgetall(self, command: Command) -> dict[str, str]:
        value: dict[str, str] | None = self._typed(command.key, dict)
        return {} if value is None else dict(value)

    def _op_hdel(self, command: Command) -> int:
        value: dict[str, str] | None = self._typed(command.key, dict)
        if value is None:
            return 0
        removed = sum(1 for name in set(command.values) if value.pop(name, None) is not None)
        self._drop_if_empty(command.key, value)
        return removed

    # -- lists ---------------------------------------------------------------------

    def _list(self, key: str) -> deque[str]:
        value: deque[str] | None = self._typed(key, deque)
        if value is None:
            value = deque()
            self._store(key, value)
        return value

    def _op_lpush(self, command: Command) -> int:
        value = self._list(command.key)
        value.extendleft(command.values)
        return len(value)

    def _op_rpush(self, command: Command) -> int:
        value = self._list(command.key)
        value.extend(command.values)
        return len(value)

    def _op_lrange(self, command: Command) -> list[str]:
        value: deque[str] | None = self._typed(command.key, deque)
        if value is None:
            return []
        size = len(value)
        start = max(command.start + size if command.start < 0 else command.start, 0)
        stop = command.stop + size if command.stop < 0 else command.stop
        stop = min(stop, size - 1)
        if start > stop:
            return []
        return [value[i] for i in range(start, stop + 1)]

    # -- sets ----------------------------------------------------------------------

    def _op_sadd(self, command: Command) -> int:
        value: set[str] | None = self._typed(command.key, set)
        if value is None:
            value = set()
            self._store(command.key, value)
        before = len(value)
        value.update(command.values)
        return len(value) - before

    def _op_srem(self, command: Command) -> int:
        value: set[str] | None = self._typed(command.key, set)
        if value is None:
            return 0
        before = len(value)
        value.difference_update(command.values)
        self._drop_if_empty(command.key, value)
        return before - len(value)

    def _op_smembers(self, command: Command) -> list[str]:
        value: set[str] | None = self._typed(command.key, set)
        return [] if value is None else sorted(value)


# op -> handler, resolved once rather than by a getattr per command.
_HANDLERS: dict[str, Callable[[MemoryStore, Command], Any]] = {
    name.removeprefix("_op_"): handler
    for name, handler in vars(MemoryStore).items()
    if name.startswith("_op_")
}


class AsyncMemoryManager(AsyncDatabaseManager):
    """The ``memory`` database type: a :class:`MemoryStore` behind the manager API.

    ``conn_string`` is accepted for symmetry with the other types
    (``"memory://"`` or empty) and otherwise ignored.
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
    ) -> None:
        super().__init__(name=name)
        if conn_string not in ("", "memory://", "memory:"):
            raise ConfigError(f"a memory database takes no connection string, got {conn_string!r}")
        self.store = MemoryStore(clock=clock, max_keys=max_keys)
        # Told (name, keys) after each delete; never for what store.apply does directly.
        self.on_delete: Callable[[str, Sequence[str]], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<AsyncMemoryManager {self.name!r} state={self.state.value} "
            f"keys={len(self.store)} max_keys={self.store.max_keys}>"
        )

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
