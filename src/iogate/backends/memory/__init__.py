"""The ``memory`` database type: Redis's operations in process.

- :mod:`.store` — ``MemoryStore``, the data structures and the operations on them
- :mod:`.manager` — ``AsyncMemoryManager``, the store behind the manager API
"""

from iogate.backends.memory.manager import AsyncMemoryManager
from iogate.backends.memory.store import DEFAULT_MAX_KEYS, MemoryStore

__all__ = ["DEFAULT_MAX_KEYS", "AsyncMemoryManager", "MemoryStore"]
