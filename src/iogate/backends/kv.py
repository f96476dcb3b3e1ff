"""Key-value operations shared by the Redis and memory managers.

Both managers take the seed's call shape, ``execute_query(key, {"operation":
"set", "key": k, "value": v, "ttl": s})``, so the request is parsed and
validated once, here, into a :class:`Command`. The Redis manager turns a
Command into a RESP command and shapes the raw reply; the memory manager
applies it to its dictionaries. Either way the caller sees the same data:

| operation           | fields                                   | data                      |
|---------------------|------------------------------------------|---------------------------|
| get                 | key                                      | str or None               |
| set                 | key, value, ttl?, nx?, xx?               | True, or False if nx/xx refused |
| delete              | key or keys                              | int (keys removed)        |
| exists              | key or keys                              | int (keys that exist)     |
| expire              | key, ttl, nx? xx? gt? lt?                | bool                      |
| ttl                 | key                                      | int (-2 missing, -1 none) |
| incr / incrby       | key, amount? (incr: 1)                   | int                       |
| mget                | keys                                     | list[str or None]         |
| mset                | mapping                                  | True                      |
| hget / hset         | key, field (, value) or mapping          | str or None / int added   |
| hgetall / hdel      | key (, field or fields)                  | dict / int removed        |
| lpush / rpush       | key, value or values                     | int (new length)          |
| lrange              | key, start? (0), stop? (-1)              | list[str]                 |
| sadd / srem         | key, member(s) or value(s)               | int                       |
| smembers            | key                                      | sorted list[str]          |
| publish             | channel (or key), message (or value)     | int (receivers)           |
| pipeline            | operations: [ {operation...}, ... ]      | list, one entry per op    |
| transaction         | operations: [ ... ] (MULTI/EXEC)         | list, one entry per op    |

Values that are not strings are stored as JSON (``get`` returns the stored
string, so ``json.loads(result.data)`` gives them back). ``key`` defaults to
the query string when the params omit it, since the seed passes the key as
the query too.

``READ_OPERATIONS`` says which operations write nothing. A request made
read-only (a key without write scope) is refused a write with ``read_only``
(:func:`check_read_only`); a manager made read-only (``read_only=True``) with
``forbidden_statement`` (:func:`refuse_writes`); either before anything runs.

Keys under ``iogate:`` (``RESERVED_PREFIX``) are iogate's own: the named
operations' cache entries and tag sets. An untrusted caller (a gateway key
without ``admin``, any ``guard``) may not name one, to read or to write:
:func:`check_unreserved` refuses the command before it is sent. Every key a
command touches is named in it (there is no pattern, scan or script
operation), so checking the parsed command covers them all: single keys,
``keys`` lists, ``mset`` mappings, every entry of a pipeline or transaction,
and ``publish`` channels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import orjson

from iogate.core.errors import (
    ErrorType,
    ForbiddenStatementError,
    InvalidRequestError,
    IogateError,
    ReadOnlyError,
)
from iogate.core.jsonable import jsonable
from iogate.core.result import Result

__all__ = [
    "KEYED_OPERATIONS",
    "OPERATIONS",
    "READ_OPERATIONS",
    "RESERVED_PREFIX",
    "Command",
    "batch_result",
    "check_read_only",
    "check_unreserved",
    "encode_value",
    "parse_command",
    "refuse_writes",
]

# Operations that take exactly one key.
KEYED_OPERATIONS = frozenset(
    {
        "get",
        "set",
        "expire",
        "ttl",
        "incr",
        "incrby",
        "hget",
        "hset",
        "hgetall",
        "hdel",
        "lpush",
        "rpush",
        "lrange",
        "sadd",
        "srem",
        "smembers",
    }
)
OPERATIONS = KEYED_OPERATIONS | {
    "delete",
    "exists",
    "mget",
    "mset",
    "publish",
    "pipeline",
    "transaction",
}
# The operations that write nothing: the one table every read-only check
# (a read-only request, a read-only manager) consults.
READ_OPERATIONS = frozenset(
    {"get", "exists", "ttl", "mget", "hget", "hgetall", "lrange", "smembers"}
)
MAX_BATCH = 10_000  # commands in one pipeline/transaction
RESERVED_PREFIX = "iogate:"  # iogate's own keys: no untrusted command names one


class Command(NamedTuple):
    """One validated key-value operation; values already encoded as str.

    A NamedTuple rather than a frozen dataclass: one is built per operation,
    and a frozen dataclass sets each of these twelve fields through
    ``object.__setattr__`` (about three times the cost). Build it with
    keywords.
    """

    op: str
    key: str = ""
    keys: tuple[str, ...] = ()
    value: str = ""
    values: tuple[str, ...] = ()
    mapping: tuple[tuple[str, str], ...] = ()
    ttl: float | None = None
    flag: str | None = None  # set: NX|XX; expire: NX|XX|GT|LT
    amount: int = 1
    start: int = 0
    stop: int = -1
    commands: tuple[Command, ...] = ()


def encode_value(value: Any) -> str:
    """Strings stay as they are; anything else is stored as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return orjson.dumps(value, default=jsonable, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise InvalidRequestError(f"value cannot be stored as JSON: {exc}") from None


def parse_command(query: str, params: Any, *, nested: bool = False) -> Command:
    """Validate the seed-style params into a Command or raise InvalidRequestError."""
    # A plain dict skips the (slow) abstract Mapping check.
    if type(params) is not dict and not isinstance(params, Mapping):
        raise InvalidRequestError(
            'key-value params must be a mapping like {"operation": "get", "key": "k"}'
        )
    raw_op = params.get("operation")
    if raw_op == "get":  # the hot path: skip the generic checks
        return _parse_keyed(raw_op, query, params)
    if not isinstance(raw_op, str) or not raw_op:
        raise InvalidRequestError('missing "operation" (e.g. "get", "set", "delete")')
    op = raw_op.lower()
    if op == "del":
        op = "delete"
    if op not in OPERATIONS:
        known = ", ".join(sorted(OPERATIONS))
        raise InvalidRequestError(f"unknown operation {raw_op!r} (known: {known})")
    if op in ("pipeline", "transaction"):
        if nested:
            raise InvalidRequestError(f"{op} cannot be nested inside a pipeline or transaction")
        return _parse_batch(op, params)
    parser = _PARSERS.get(op, _parse_keyed)
    return parser(op, query, params)


# -- field helpers -------------------------------------------------------------


def _key(query: str, params: Mapping[str, Any], name: str = "key") -> str:
    key = params.get(name, query if name == "key" else None)
    if isinstance(key, int | float) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key:
        raise InvalidRequestError(f'operation {params.get("operation")!r} needs a "{name}"')
    return key


def _keys(query: str, params: Mapping[str, Any]) -> tuple[str, ...]:
    if "keys" in params:
        keys = params["keys"]
        if isinstance(keys, str) or not isinstance(keys, Sequence) or not keys:
            raise InvalidRequestError('"keys" must be a non-empty list of strings')
        return tuple(_as_str(k, "keys") for k in keys)
    return (_key(query, params),)


def _as_str(value: Any, name: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidRequestError(f'"{name}" entries must be non-empty strings')


def _required(params: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in params and params[name] is not None:
            return params[name]
    joined = '" or "'.join(names)
    raise InvalidRequestError(f'operation {params.get("operation")!r} needs "{joined}"')


def _many(params: Mapping[str, Any], plural: str, *singular: str) -> tuple[str, ...]:
    if plural in params and params[plural] is not None:
        items = params[plural]
        if isinstance(items, str) or not isinstance(items, Sequence) or not items:
            raise InvalidRequestError(f'"{plural}" must be a non-empty list')
        return tuple(encode_value(v) for v in items)
    return (encode_value(_required(params, *singular)),)


def _ttl(params: Mapping[str, Any], *, required: bool) -> float | None:
    ttl = params.get("ttl")
    if ttl is None:
        if required:
            raise InvalidRequestError(f'operation {params.get("operation")!r} needs "ttl"')
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl):
        raise InvalidRequestError('"ttl" must be a number of seconds')
    if ttl <= 0:
        raise InvalidRequestError(f'"ttl" must be positive, got {ttl}')
    return float(ttl)


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f'"{name}" must be an integer')
    return value


def _flag(params: Mapping[str, Any], allowed: tuple[str, ...]) -> str | None:
    chosen = [name.upper() for name in allowed if params.get(name)]
    if len(chosen) > 1:
        raise InvalidRequestError(f"at most one of {', '.join(allowed)} may be set")
    return chosen[0] if chosen else None


# -- per-operation parsers -------------------------------------------------------


def _parse_keyed(op: str, query: str, params: Mapping[str, Any]) -> Command:
    key = params.get("key", query)
    if type(key) is str and key:  # the common case, checked without the helpers
        return Command(op=op, key=key)
    return Command(op=op, key=_key(query, params))


def _parse_set(op: str, query: str, params: Mapping[str, Any]) -> Command:
    if "value" not in params:
        raise InvalidRequestError('operation "set" needs "value"')
    return Command(
        op=op,
        key=_key(query, params),
        value=encode_value(params["value"]),
        ttl=_ttl(params, required=False),
        flag=_flag(params, ("nx", "xx")),
    )


def _parse_multi_key(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(op=op, keys=_keys(query, params))


def _parse_expire(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(
        op=op,
        key=_key(query, params),
        ttl=_ttl(params, required=True),
        flag=_flag(params, ("nx", "xx", "gt", "lt")),
    )


def _parse_incr(op: str, query: str, params: Mapping[str, Any]) -> Command:
    if op == "incrby" and "amount" not in params and "value" not in params:
        raise InvalidRequestError('operation "incrby" needs "amount"')
    name = "amount" if "amount" in params else "value"
    return Command(op=op, key=_key(query, params), amount=_int(params, name, 1))


def _parse_mget(op: str, query: str, params: Mapping[str, Any]) -> Command:
    if "keys" not in params:
        raise InvalidRequestError('operation "mget" needs "keys"')
    return Command(op=op, keys=_keys(query, params))


def _mapping(params: Mapping[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    mapping = params.get(name)
    if not isinstance(mapping, Mapping) or not mapping:
        raise InvalidRequestError(f'"{name}" must be a non-empty object')
    return tuple((_as_str(k, name), encode_value(v)) for k, v in mapping.items())


def _parse_mset(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(op=op, mapping=_mapping(params, "mapping"))


def _parse_hget(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(
        op=op, key=_key(query, params), value=_as_str(_required(params, "field"), "field")
    )


def _parse_hset(op: str, query: str, params: Mapping[str, Any]) -> Command:
    if "mapping" in params:
        mapping = _mapping(params, "mapping")
    else:
        field_name = _as_str(_required(params, "field"), "field")
        if "value" not in params:
            raise InvalidRequestError('operation "hset" needs "value" (or "mapping")')
        mapping = ((field_name, encode_value(params["value"])),)
    return Command(op=op, key=_key(query, params), mapping=mapping)


def _parse_hdel(op: str, query: str, params: Mapping[str, Any]) -> Command:
    fields = _many(params, "fields", "field")
    return Command(op=op, key=_key(query, params), values=fields)


def _parse_push(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(op=op, key=_key(query, params), values=_many(params, "values", "value"))


def _parse_lrange(op: str, query: str, params: Mapping[str, Any]) -> Command:
    return Command(
        op=op,
        key=_key(query, params),
        start=_int(params, "start", 0),
        stop=_int(params, "stop", -1),
    )


def _parse_set_members(op: str, query: str, params: Mapping[str, Any]) -> Command:
    members = _many(params, "members", "member", "values", "value")
    return Command(op=op, key=_key(query, params), values=members)


def _parse_publish(op: str, query: str, params: Mapping[str, Any]) -> Command:
    channel = params.get("channel") or _key(query, params)
    message = _required(params, "message", "value")
    return Command(op=op, key=_as_str(channel, "channel"), value=encode_value(message))


def _parse_batch(op: str, params: Mapping[str, Any]) -> Command:
    items = params.get("operations")
    if isinstance(items, str) or not isinstance(items, Sequence) or not items:
        raise InvalidRequestError(f'operation "{op}" needs a non-empty list "operations"')
    if len(items) > MAX_BATCH:
        raise InvalidRequestError(f"{op}: at most {MAX_BATCH} operations, got {len(items)}")
    commands = []
    for index, item in enumerate(items):
        try:
            commands.append(parse_command("", item, nested=True))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"{op} operation #{index}: {exc}") from None
    return Command(op=op, commands=tuple(commands))


_PARSERS = {
    "set": _parse_set,
    "delete": _parse_multi_key,
    "exists": _parse_multi_key,
    "expire": _parse_expire,
    "incr": _parse_incr,
    "incrby": _parse_incr,
    "mget": _parse_mget,
    "mset": _parse_mset,
    "hget": _parse_hget,
    "hset": _parse_hset,
    "hdel": _parse_hdel,
    "lpush": _parse_push,
    "rpush": _parse_push,
    "lrange": _parse_lrange,
    "sadd": _parse_set_members,
    "srem": _parse_set_members,
    "publish": _parse_publish,
}


def batch_result(command: Command, outcomes: Sequence[Any]) -> Result:
    """One Result for a pipeline/transaction: a list with one entry per operation.

    An operation that failed leaves ``None`` in its slot and fails the whole
    Result (error_type of the first failure, naming its index); the others
    did run, as they would in Redis.
    """
    data = [None if isinstance(o, BaseException) else o for o in outcomes]
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            error_type: ErrorType = (
                outcome.error_type if isinstance(outcome, IogateError) else "query_error"
            )
            message = f"operation #{index} ({command.commands[index].op}) failed: {outcome}"
            return Result.fail(message, error_type, operation=command.op, data=data)
    return Result.ok(data, operation=command.op)


def check_read_only(command: Command) -> None:
    """Refuse a write on a read-only request (a key without write scope)."""
    for sub in command.commands or (command,):
        if sub.op not in READ_OPERATIONS:
            raise ReadOnlyError(f"operation {sub.op!r} writes; this request is read-only")


def refuse_writes(command: Command, name: str) -> None:
    """Refuse a command that writes on a read-only manager (``forbidden_statement``).

    A pipeline or transaction holding one write is refused as a whole, so
    nothing of it runs.
    """
    for sub in command.commands or (command,):
        if sub.op not in READ_OPERATIONS:
            raise ForbiddenStatementError(
                f"{name}: operation {sub.op!r} writes; this database is read-only",
                kind=sub.op,
            )


def check_unreserved(command: Command) -> None:
    """Refuse a command (or pipeline entry) naming a key under ``RESERVED_PREFIX``."""
    for sub in command.commands or (command,):
        if sub.key.startswith(RESERVED_PREFIX):
            _refuse_reserved(sub, sub.key)
        for name in sub.keys:
            if name.startswith(RESERVED_PREFIX):
                _refuse_reserved(sub, name)
        if sub.op == "mset":  # for hset the mapping holds fields, not keys
            for name, _ in sub.mapping:
                if name.startswith(RESERVED_PREFIX):
                    _refuse_reserved(sub, name)


def _refuse_reserved(command: Command, name: str) -> NoReturn:
    raise ForbiddenStatementError(
        f"operation {command.op!r} names {name[:100]!r}: keys under {RESERVED_PREFIX!r} "
        "are iogate's own (the named-operation cache) and need db:NAME:admin",
        kind="reserved key",
    )
