"""The key-value command table: what writes, and what a read-only manager lets through."""

from __future__ import annotations

import pytest

from iogate.backends.kv import (
    OPERATIONS,
    READ_OPERATIONS,
    Command,
    check_read_only,
    refuse_writes,
)
from iogate.backends.redis.resp import READ_COMMANDS, command_args
from iogate.core.errors import ForbiddenStatementError, ReadOnlyError

SINGLE = sorted(OPERATIONS - {"pipeline", "transaction"})
WRITES = sorted(set(SINGLE) - READ_OPERATIONS)


def _command(op: str) -> Command:
    return Command(op=op, key="k", keys=("k",), ttl=1.0, mapping=(("f", "v"),), values=("v",))


def test_the_table_classifies_every_operation() -> None:
    assert READ_OPERATIONS < OPERATIONS
    assert set(WRITES) == {
        "set",
        "delete",
        "expire",
        "incr",
        "incrby",
        "mset",
        "hset",
        "hdel",
        "lpush",
        "rpush",
        "sadd",
        "srem",
        "publish",
    }


@pytest.mark.parametrize("op", SINGLE)
def test_refuse_writes_follows_the_table(op: str) -> None:
    if op in READ_OPERATIONS:
        refuse_writes(_command(op), "cache")
        return
    with pytest.raises(ForbiddenStatementError, match=f"cache: operation '{op}' writes") as info:
        refuse_writes(_command(op), "cache")
    assert info.value.error_type == "forbidden_statement"
    assert info.value.kind == op


@pytest.mark.parametrize("batch", ["pipeline", "transaction"])
def test_one_write_refuses_a_whole_batch(batch: str) -> None:
    reads = tuple(_command(op) for op in sorted(READ_OPERATIONS))
    refuse_writes(Command(op=batch, commands=reads), "cache")
    with pytest.raises(ForbiddenStatementError, match="'sadd'"):
        refuse_writes(Command(op=batch, commands=(*reads, _command("sadd"))), "cache")


def test_a_read_only_request_and_a_read_only_manager_refuse_with_their_own_error() -> None:
    with pytest.raises(ReadOnlyError):
        check_read_only(_command("set"))
    with pytest.raises(ForbiddenStatementError):
        refuse_writes(_command("set"), "cache")


def test_raw_commands_a_read_only_redis_allows_are_the_reads_verbs_and_ping() -> None:
    assert {command_args(_command(op))[0] for op in READ_OPERATIONS} | {"PING"} == READ_COMMANDS
    assert {
        "GET",
        "EXISTS",
        "TTL",
        "MGET",
        "HGET",
        "HGETALL",
        "LRANGE",
        "SMEMBERS",
        "PING",
    } == READ_COMMANDS
    for op in WRITES:
        assert command_args(_command(op))[0] not in READ_COMMANDS, op
