"""An in-process key-value store with Redis's operations and TTL semantics.

``MemoryStore`` holds the data structures and applies parsed
:class:`~iogate.backends.kv.Command` objects to them, with Redis's data
shapes and its error text for a wrong type; no I/O, no asyncio. Expiry is
exact on access (an expired key is never returned) and time comes from an
injectable ``clock``. Memory is bounded by ``max_keys``: when full, expired
keys are purged first, then the least recently used key is evicted (Redis's
``allkeys-lru``, done exactly with an ordered dict).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from iogate.backends.kv import Command
from iogate.core.errors import ConfigError, QueryError

__all__ = ["DEFAULT_MAX_KEYS", "MemoryStore"]

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
