"""Every worker's ``/stats``: each publishes its snapshot, ``/stats`` shows their aggregate.

With ``iogate serve --workers N`` or several gateways on ``[gateway]
shared_state``, each process leaves its latest ``/stats`` snapshot on a
:class:`StatsBoard` every second: a Redis hash ``iogate:stats:<host>:<pid>``
with a TTL (:class:`RedisStatsBoard`, with ``shared_state``), or a file in
the Prometheus multiprocess directory that ``--workers`` already share
(:class:`FileStatsBoard`, without it). :class:`WorkerStats` publishes this
worker's and reads the others'; :func:`merge_stats` adds them up into one
``/stats`` body, which lists each under ``workers``.

A board that does not answer never fails ``/stats``: every call has a
deadline, and the answer is then this worker's own numbers with
``workers_complete: false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from iogate.backends.kv import RESERVED_PREFIX
from iogate.core.deadline import Deadline
from iogate.core.errors import IogateError

if TYPE_CHECKING:
    from iogate.backends.redis import AsyncRedisManager

__all__ = [
    "BOARD_TIMEOUT",
    "STATS_INTERVAL",
    "STATS_TTL",
    "FileStatsBoard",
    "RedisStatsBoard",
    "StatsBoard",
    "WorkerStats",
    "merge_stats",
]

logger = logging.getLogger("iogate.gateway.worker_stats")

STATS_INTERVAL = 1.0
STATS_TTL = 5.0  # a worker silent this long is gone from /stats
# Every call to a board (publish, collect, withdraw): answered within this many seconds.
BOARD_TIMEOUT = 1.0


# -- where the snapshots are left -------------------------------------------------------------


class StatsBoard(Protocol):
    """Where workers leave their latest ``/stats`` snapshot for each other."""

    async def publish(self, worker: Mapping[str, Any]) -> None: ...

    async def collect(self) -> list[dict[str, Any]]: ...

    async def withdraw(self, worker_id: str) -> None: ...


class RedisStatsBoard:
    """``iogate:stats:<worker-id>`` hashes with a TTL, listed in ``iogate:workers``."""

    def __init__(
        self,
        redis: AsyncRedisManager,
        *,
        prefix: str = RESERVED_PREFIX,
        ttl: float = STATS_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl = ttl
        self._clock = clock

    @property
    def index(self) -> str:
        return f"{self.prefix}workers"

    def key(self, worker_id: str) -> str:
        return f"{self.prefix}stats:{worker_id}"

    async def _run(self, key: str, operations: list[dict[str, Any]]) -> list[Any]:
        result = await self.redis.execute_query(
            key,
            {"operation": "pipeline", "operations": operations},
            deadline=Deadline(BOARD_TIMEOUT),
        )
        if not result.success:
            raise _BoardError(result.error or "redis failed")
        return list(result.data)

    async def publish(self, worker: Mapping[str, Any]) -> None:
        key = self.key(worker["id"])
        fields = {"worker": orjson.dumps(worker).decode()}
        await self._run(
            key,
            [
                {"operation": "hset", "key": key, "mapping": fields},
                {"operation": "expire", "key": key, "ttl": self.ttl},
                {
                    "operation": "hset",
                    "key": self.index,
                    "field": worker["id"],
                    "value": str(worker["published_at"]),
                },
            ],
        )

    async def collect(self) -> list[dict[str, Any]]:
        index = (await self._run(self.index, [{"operation": "hgetall", "key": self.index}]))[0]
        if not isinstance(index, dict):
            index = {}
        now = self._clock()
        live = [w for w, at in index.items() if _float(at) > now - self.ttl]
        gone = [w for w in index if w not in live]
        operations: list[dict[str, Any]] = [
            {"operation": "hgetall", "key": self.key(w)} for w in live
        ]
        if gone:
            operations.append({"operation": "hdel", "key": self.index, "fields": gone})
        replies = await self._run(self.index, operations) if operations else []
        workers = []
        for reply in replies[: len(live)]:
            if isinstance(reply, dict) and "worker" in reply:
                with contextlib.suppress(orjson.JSONDecodeError):
                    workers.append(orjson.loads(reply["worker"]))
        return workers

    async def withdraw(self, worker_id: str) -> None:
        await self._run(
            self.index,
            [
                {"operation": "delete", "key": self.key(worker_id)},
                {"operation": "hdel", "key": self.index, "field": worker_id},
            ],
        )


class FileStatsBoard:
    """``iogate-stats-<pid>.json`` files in a directory the workers share (one host)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        ttl: float = STATS_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.ttl = ttl
        self._clock = clock

    def _file(self, pid: int) -> Path:
        return self.directory / f"iogate-stats-{pid}.json"

    async def publish(self, worker: Mapping[str, Any]) -> None:
        target = self._file(int(worker["pid"]))
        partial = target.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(worker))
        os.replace(partial, target)  # readers see the old file or the new one

    async def collect(self) -> list[dict[str, Any]]:
        workers = []
        now = self._clock()
        for file in self.directory.glob("iogate-stats-*.json"):
            try:
                worker = orjson.loads(file.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed meanwhile, or being replaced
            if not isinstance(worker, dict):
                continue
            if _float(worker.get("published_at")) <= now - self.ttl:
                if not _alive(int(worker.get("pid", 0))):
                    file.unlink(missing_ok=True)
                continue
            workers.append(worker)
        return workers

    async def withdraw(self, worker_id: str) -> None:
        self._file(os.getpid()).unlink(missing_ok=True)


class _BoardError(IogateError):
    """The stats board did not answer (internal: /stats then shows this worker only)."""


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerStats:
    """This worker's ``/stats`` snapshot on a :class:`StatsBoard`, and everyone's aggregate.

    ``snapshot()`` returns this worker's ``/stats`` body (without
    ``workers``); ``run()`` publishes it every ``interval`` and keeps the
    others' latest for :meth:`aggregate_now` (the dashboard's history).
    """

    def __init__(
        self,
        board: StatsBoard | None,
        snapshot: Callable[[], dict[str, Any]],
        *,
        interval: float = STATS_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board = board
        self._snapshot = snapshot
        self.interval = interval
        self._clock = clock
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.id = f"{self.host}:{self.pid}"
        self._peers: list[dict[str, Any]] = []
        self._failing = False

    def __repr__(self) -> str:
        return f"<WorkerStats {self.id!r} peers={len(self._peers)}>"

    def describe(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        """This worker's entry of the ``workers`` list."""
        return {
            "id": self.id,
            "pid": self.pid,
            "host": self.host,
            "published_at": round(self._clock(), 3),
            **stats,
        }

    async def run(self) -> None:
        """Publish every ``interval`` until cancelled; then withdraw (bounded)."""
        if self.board is None:
            return
        try:
            while True:
                await self._exchange()
                await asyncio.sleep(self.interval)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BOARD_TIMEOUT):
                    await self.board.withdraw(self.id)

    async def _exchange(self) -> None:
        assert self.board is not None
        try:
            await self.board.publish(self.describe(self._snapshot()))
            self._peers = [w for w in await self.board.collect() if w.get("id") != self.id]
        except Exception as exc:  # the loop must outlive a bad snapshot or a board down
            self._peers = []
            if not self._failing:
                logger.warning("stats of the other workers are unavailable: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("stats of the other workers are available again")
        self._failing = False

    async def gather(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` merged with every other live worker's latest, plus ``workers``."""
        mine = self.describe(own)
        if self.board is None:
            return {**own, "workers": [mine], "workers_complete": True}
        try:
            async with asyncio.timeout(BOARD_TIMEOUT):
                peers = [w for w in await self.board.collect() if w.get("id") != self.id]
            complete = True
        except (IogateError, OSError, TimeoutError):
            peers, complete = [], False
        workers = sorted([mine, *peers], key=lambda w: (str(w.get("host")), _float(w.get("pid"))))
        body = merge_stats([own, *peers]) if peers else dict(own)
        body["uptime_s"] = own.get("uptime_s")
        body["workers"] = workers
        body["workers_complete"] = complete
        return body

    def aggregate_now(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` merged with the others' snapshots last collected (no I/O)."""
        return merge_stats([own, *self._peers]) if self._peers else own


# -- merging snapshots -------------------------------------------------------------------------

# Numbers that do not add up across workers: the largest is kept.
_LARGEST = frozenset(
    {
        "retry_after",
        "uptime_s",
        "p50",
        "p95",
        "p99",
        "max",
        "latency_ms",
        "baseline_ms",
        "queue_timeout_ms",
        "loop_lag_ms",
    }
)
# Per-worker settings, the same everywhere: the most common value is kept.
_SETTING = frozenset({"ratio"})
_BREAKER_SEVERITY = {"closed": 0, "disabled": 0, "half_open": 1, "open": 2}


def merge_stats(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ``/stats``-shaped body for several workers' snapshots.

    Counts, throughputs and pool sizes add up; a resource's success rate is
    recomputed from its counts and its mean latency weighted by them; its
    percentiles are the largest worker's (an upper bound: the sketches
    themselves are not shared); a circuit shows its worst state; other
    differing strings show the most common value.
    """
    # Who published a snapshot is not a statistic: never summed into the total.
    merged = _merge_dicts(
        [{k: v for k, v in snap.items() if k not in _IDENTITY} for snap in snapshots],
        None,
        weights=None,
    )
    return merged


_IDENTITY = frozenset({"id", "pid", "host", "published_at"})


def _merge_dicts(
    dicts: list[Mapping[str, Any]], parent: str | None, *, weights: list[float] | None
) -> dict[str, Any]:
    keys: list[str] = []
    for d in dicts:
        keys.extend(k for k in d if k not in keys)
    counts = [_float(d.get("count")) for d in dicts]
    has_counts = all("count" in d for d in dicts)
    out: dict[str, Any] = {}
    for key in keys:
        present = [d for d in dicts if key in d]
        values = [d[key] for d in present]
        child_weights = [_float(d.get("count")) for d in present] if has_counts else weights
        out[key] = _merge_values(values, key, parent, child_weights)
    if has_counts and "success_rate" in out:
        total, errors = sum(counts), _float(out.get("errors"))
        out["success_rate"] = None if total == 0 else (total - errors) / total
    return out


def _merge_values(
    values: list[Any], key: str, parent: str | None, weights: list[float] | None
) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    first = present[0]
    if isinstance(first, Mapping):
        dicts = [v for v in present if isinstance(v, Mapping)]
        return _merge_dicts(dicts, key, weights=weights if len(dicts) == len(values) else None)
    if isinstance(first, bool):
        return any(bool(v) for v in present)
    if isinstance(first, int | float):
        numbers = [v for v in present if isinstance(v, int | float) and not isinstance(v, bool)]
        if key == "mean" and weights is not None and len(weights) == len(numbers):
            total = sum(weights)
            if total > 0:
                return round(sum(v * w for v, w in zip(numbers, weights, strict=True)) / total, 3)
        if key in _LARGEST or key == "mean":
            return max(numbers)
        if key in _SETTING:
            return Counter(numbers).most_common(1)[0][0]
        total_number = sum(numbers)
        return round(total_number, 3) if isinstance(total_number, float) else total_number
    if isinstance(first, str):
        strings = [str(v) for v in present]
        if key == "state" and parent == "circuit":
            return max(strings, key=lambda s: _BREAKER_SEVERITY.get(s, 0))
        return Counter(strings).most_common(1)[0][0]
    if isinstance(first, list):
        return _unique(item for v in present if isinstance(v, list) for item in v)
    return first


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
