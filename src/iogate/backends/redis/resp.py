"""Key-value commands as RESP, and raw RESP replies as the data kv promises.

:func:`command_args` turns a :class:`~iogate.backends.kv.Command` into the
Redis command that runs it; :func:`shape_reply` turns the raw RESP2 reply
(hiredis's, or redis.asyncio's with its response callbacks removed) into the
data shape of :mod:`iogate.backends.kv`, so both connection modes answer
alike. ``READ_COMMANDS`` is the table a read-only manager checks a raw
command against (``execute_command``).
"""

from __future__ import annotations

import math
from typing import Any

import hiredis
import redis.exceptions as redis_errors

from iogate.backends.kv import READ_OPERATIONS, Command
from iogate.core.errors import QueryError

__all__ = [
    "READ_COMMANDS",
    "REPLY_ERRORS",
    "command_args",
    "exec_replies",
    "shape_or_error",
    "shape_reply",
]

_VERBS = {"delete": "DEL", "exists": "EXISTS", "mget": "MGET"}

REPLY_ERRORS = (hiredis.ReplyError, redis_errors.ResponseError)  # a tuple checks faster


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def command_args(command: Command) -> tuple[Any, ...]:
    """The RESP command for one (non-batch) Command."""
    op = command.op
    if op == "get":
        return ("GET", command.key)
    if op == "set":
        args: tuple[Any, ...] = ("SET", command.key, command.value)
        if command.ttl is not None:
            args += ("PX", _ms(command.ttl))
        return args + ((command.flag,) if command.flag else ())
    if op in ("delete", "exists", "mget"):
        return (_VERBS[op], *command.keys)
    if op == "expire":
        assert command.ttl is not None  # parse_command requires it
        return ("PEXPIRE", command.key, _ms(command.ttl)) + (
            (command.flag,) if command.flag else ()
        )
    if op in ("incr", "incrby"):
        return ("INCRBY", command.key, command.amount)
    if op == "mset":
        return ("MSET", *[part for pair in command.mapping for part in pair])
    if op == "hget":
        return ("HGET", command.key, command.value)
    if op == "hset":
        return ("HSET", command.key, *[part for pair in command.mapping for part in pair])
    if op == "lrange":
        return ("LRANGE", command.key, command.start, command.stop)
    if op == "publish":
        return ("PUBLISH", command.key, command.value)
    if op in ("hdel", "lpush", "rpush", "sadd", "srem"):
        return (op.upper(), command.key, *command.values)
    return (op.upper(), command.key)  # ttl, hgetall, smembers


# The Redis commands a read-only manager lets through ``execute_command``:
# those its read operations send, and PING. Everything else (EVAL, FLUSHDB,
# CONFIG, ...) is refused: a table of what is allowed, never a guess from a
# command's name.
READ_COMMANDS = frozenset(
    {command_args(Command(op=op, key="k", keys=("k",)))[0] for op in READ_OPERATIONS} | {"PING"}
)


def shape_reply(command: Command, reply: Any) -> Any:
    """Raw RESP2 reply -> the data shape :mod:`iogate.backends.kv` promises."""
    if isinstance(reply, REPLY_ERRORS):
        raise QueryError(str(reply))
    op = command.op
    if op == "set":
        return reply is not None
    if op == "mset":
        return True
    if op == "expire":
        return bool(reply)
    if op == "hgetall":
        return dict(zip(reply[::2], reply[1::2], strict=True))
    if op == "smembers":
        return sorted(reply)
    return reply


def shape_or_error(command: Command, reply: Any) -> Any:
    try:
        return shape_reply(command, reply)
    except QueryError as exc:
        return exc


def exec_replies(raw: list[Any]) -> list[Any]:
    """[OK, QUEUED..., EXEC reply] -> the EXEC reply, or a QueryError."""
    result = raw[-1]
    if isinstance(result, hiredis.ReplyError):
        queued_errors = [r for r in raw[1:-1] if isinstance(r, hiredis.ReplyError)]
        raise QueryError(str(queued_errors[0] if queued_errors else result))
    if result is None:
        raise QueryError("transaction aborted")
    replies: list[Any] = result
    return replies
