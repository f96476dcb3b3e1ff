"""Mixed batches: the seed's ``execute_batch_operations(operations)``, done safely.

A batch is a list of operations in the seed's dict format::

    {"type": "database", "db_name": "main_db", "query": "...", "params": {...}}
    {"type": "api", "api_name": "ext", "method": "POST", "endpoint": "/e", "data": {...}}
    (``method`` defaults to GET, as on ``POST /api/execute``)
    {"type": "transaction", "db_name": "main_db", "queries": [{"query": ..., "params": ...}]}
    {"type": "operation", "name": "get_user", "params": {"id": 1}}

It returns one ``Result`` per operation, in request order. Operations run
concurrently (at most ``concurrency`` at a time) and one operation's failure
never affects another, except an operation that references a failed one
(see ``refs``): that one is skipped with ``dependency_failed``. A malformed
operation gets its own ``invalid_request`` Result naming the missing field.
One ``deadline`` bounds the whole batch.

Refused as a whole before anything runs (every Result ``invalid_request``,
the gateway answers 422): a forward or unknown reference, a duplicated step
id, and ``atomic=True`` on anything but SQL operations on one database,
since an HTTP call or a second database cannot be rolled back with it.

Efficiency without changing the outcome: independent key-value operations
on one Redis/memory database are sent as pipelines, and the same
INSERT/UPDATE repeated on one SQL database runs as one group on one
connection in one transaction (``execute_many`` when the manager offers
it). Each operation still gets its own Result; a SQL group that fails is
rolled back and re-run one statement at a time so the failure stays
isolated to its own operation.

Every statement is recorded (stats, events) by the manager that runs it,
however the batch grouped it; the batch adds no records of its own.

The pieces: :mod:`.plan` validates operations into steps (no I/O),
:mod:`.grouping` decides which run together, :mod:`.state` holds a running
batch's Results, :mod:`.concurrent` and :mod:`.atomic` are the two ways of
running it, :mod:`.groups` runs a pipeline or SQL group, :mod:`.transaction`
a ``transaction`` operation, and :mod:`.runner` ties them together.
"""

from iogate.orchestrator.batch.plan import (
    HTTP_METHODS,
    BatchRefusedError,
    Step,
    check_atomic,
    plan_batch,
)
from iogate.orchestrator.batch.runner import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, execute_batch
from iogate.orchestrator.batch.state import OnResult
from iogate.orchestrator.batch.transaction import run_transaction

__all__ = [
    "DEFAULT_CONCURRENCY",
    "HTTP_METHODS",
    "MAX_CONCURRENCY",
    "BatchRefusedError",
    "OnResult",
    "Step",
    "check_atomic",
    "execute_batch",
    "plan_batch",
    "run_transaction",
]
