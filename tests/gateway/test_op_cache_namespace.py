"""Named-operation cache entries live where no client key reaches them.

A named operation's output is cached under ``iogate:op:...`` in a key-value
database that client keys may also have scopes on. A key without
``db:NAME:admin`` may name no key under ``iogate:`` in any raw key-value
operation, so it can neither read an entry (data from databases it has no
scope for) nor forge one (what the operation's callers receive). Checked on
Redis and on the in-process memory store, through ``/database/execute`` and
``/batch/execute``, with every operation shape that names keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from iogate.backends.kv import RESERVED_PREFIX, check_unreserved, parse_command
from iogate.core.errors import ForbiddenStatementError
from iogate.gateway.app import create_app
from iogate.gateway.settings import parse_settings
from iogate.orchestrator.operations import NamedOperation, _cache_key, registry_of

READER = "cache-reader-0123456789"
WRITER = "cache-writer-0123456789"
CALLER = "op-caller-0123456789"
ADMIN = "cache-admin-0123456789"
FORGED = '{"data": [{"v": "forged"}]}'


class Gateway:
    def __init__(self, client: TestClient, operation: str) -> None:
        self.client = client
        self.operation = operation
        self.tag_key = f"{RESERVED_PREFIX}tag:{operation}:7"

    def entry_key(self) -> str:
        """The cache key of ``operation`` called with ``{"v": 7}``."""
        orchestrator: Any = self.client.app.state.orchestrator  # type: ignore[attr-defined]
        op = registry_of(orchestrator).get(self.operation)
        assert op is not None
        return _cache_key(op, {"v": 7})

    def call(self) -> Any:
        response = self.client.post(
            f"/operations/{self.operation}", json={"v": 7}, headers=bearer(CALLER)
        )
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def kv(self, key: str, query: str, params: dict[str, Any]) -> Any:
        body = {"db_name": "cache", "query": query, "params": params}
        return self.client.post("/database/execute", json=body, headers=bearer(key))

    def batch(self, key: str, operations: list[dict[str, Any]]) -> Any:
        steps = [
            {"type": "database", "db_name": "cache", "query": "k", "params": p} for p in operations
        ]
        return self.client.post("/batch/execute", json={"operations": steps}, headers=bearer(key))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        cache = f'type = "redis"\nurl = "{url}"'
    else:
        cache = 'type = "memory"'
    # Unique per test: the Redis is shared with other runs.
    operation = f"lookup_{uuid.uuid4().hex[:10]}"
    config = f"""
[[gateway.api_keys]]
name = "cache-reader"
key = "{READER}"
scopes = ["db:cache:read", "batch"]

[[gateway.api_keys]]
name = "cache-writer"
key = "{WRITER}"
scopes = ["db:cache:write", "batch"]

[[gateway.api_keys]]
name = "caller"
key = "{CALLER}"
scopes = ["ops:*"]

[[gateway.api_keys]]
name = "cache-admin"
key = "{ADMIN}"
scopes = ["db:cache:admin"]

[databases.main]
type = "sqlite"
path = "{tmp_path / "ops.db"}"

[databases.cache]
{cache}

[operations.{operation}]
database = "main"
query = "SELECT ? AS v, random() AS nonce"
params = ["v"]
cache = {{ database = "cache", ttl = 60, tags = ["{operation}:{{v}}"] }}
"""
    app = create_app(parse_settings(config, env={}))
    with TestClient(app, base_url="http://localhost") as client:
        gateway = Gateway(client, operation)
        try:
            yield gateway
        finally:
            key = gateway.entry_key()
            gateway.kv(ADMIN, key, {"operation": "delete", "keys": [key, gateway.tag_key]})


def assert_refused(response: Any) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error_type"] == "forbidden_statement"
    assert RESERVED_PREFIX in body["error"]
    assert "nonce" not in response.text  # nothing of the entry leaked


def test_the_named_operation_still_caches(gateway: Gateway) -> None:
    first = gateway.call()
    assert first == gateway.call()  # same nonce: served from the cache
    key = gateway.entry_key()
    assert key.startswith(f"{RESERVED_PREFIX}op:{gateway.operation}:")
    stored = gateway.kv(ADMIN, key, {"operation": "get"})  # admin is trusted
    assert stored.status_code == 200
    assert str(first[0]["nonce"]) in stored.json()["data"]


def test_a_read_key_cannot_read_an_entry(gateway: Gateway) -> None:
    gateway.call()
    key, tag = gateway.entry_key(), gateway.tag_key
    for query, params in (
        (key, {"operation": "get"}),
        ("x", {"operation": "get", "key": key}),
        ("x", {"operation": "mget", "keys": ["harmless", key]}),
        ("x", {"operation": "exists", "keys": [key]}),
        ("x", {"operation": "ttl", "key": key}),
        ("x", {"operation": "hgetall", "key": key}),
        ("x", {"operation": "lrange", "key": key}),
        ("x", {"operation": "smembers", "key": tag}),  # would list the entries' keys
        ("x", {"operation": "pipeline", "operations": [{"operation": "get", "key": key}]}),
        ("x", {"operation": "transaction", "operations": [{"operation": "get", "key": key}]}),
    ):
        assert_refused(gateway.kv(READER, query, params))
    # In a batch (which needs write on the database): refused per operation.
    assert gateway.batch(READER, [{"operation": "get", "key": key}]).status_code == 403
    refused = gateway.batch(WRITER, [{"operation": "get", "key": key}])
    assert refused.status_code == 200
    step = refused.json()["results"][0]
    assert (step["success"], step["error_type"]) == (False, "forbidden_statement")
    assert "nonce" not in refused.text
    # Keys outside the prefix work as before.
    assert gateway.kv(READER, "x", {"operation": "get", "key": "iogate-not-reserved"}).is_success


def test_a_write_key_cannot_forge_or_drop_an_entry(gateway: Gateway) -> None:
    original = gateway.call()
    key, tag = gateway.entry_key(), gateway.tag_key
    for params in (
        {"operation": "set", "key": key, "value": FORGED},
        {"operation": "mset", "mapping": {"harmless": "1", key: FORGED}},
        {"operation": "delete", "keys": ["harmless", key]},
        {"operation": "expire", "key": key, "ttl": 1},
        {"operation": "sadd", "key": tag, "member": "victim"},
        {"operation": "publish", "channel": f"{RESERVED_PREFIX}invalidate", "message": key},
        {
            "operation": "pipeline",
            "operations": [
                {"operation": "set", "key": "harmless", "value": "1"},
                {"operation": "set", "key": key, "value": FORGED},
            ],
        },
        {"operation": "transaction", "operations": [{"operation": "delete", "key": key}]},
    ):
        assert_refused(gateway.kv(WRITER, "x", params))
    forged = gateway.batch(
        WRITER,
        [
            {"operation": "set", "key": "harmless", "value": "1"},
            {"operation": "set", "key": key, "value": FORGED},
        ],
    )
    assert forged.status_code == 200
    step = forged.json()["results"][1]
    assert (step["success"], step["error_type"]) == (False, "forbidden_statement")
    assert gateway.call() == original  # still the real, cached output


def test_fields_and_values_may_look_like_reserved_keys() -> None:
    """Only key names are reserved: a hash field or a stored value is data."""
    for params in (
        {"operation": "hset", "key": "h", "field": f"{RESERVED_PREFIX}op:x", "value": "1"},
        {"operation": "set", "key": "k", "value": f"{RESERVED_PREFIX}op:x"},
        {"operation": "sadd", "key": "s", "member": f"{RESERVED_PREFIX}op:x"},
    ):
        check_unreserved(parse_command("", params))
    with pytest.raises(ForbiddenStatementError):
        check_unreserved(parse_command(f"{RESERVED_PREFIX}op:x", {"operation": "get"}))


def test_the_key_changes_with_the_operation_definition() -> None:
    """Gateways sharing a Redis, or one restarted with a new query, never read
    another definition's entries under the same name."""
    one = NamedOperation(name="get_user", database="a", query="SELECT 1", params=("id",))
    other = NamedOperation(name="get_user", database="a", query="SELECT 2", params=("id",))
    elsewhere = NamedOperation(name="get_user", database="b", query="SELECT 1", params=("id",))
    keys = {_cache_key(op, {"id": 1}) for op in (one, other, elsewhere)}
    assert len(keys) == 3
    assert _cache_key(one, {"id": 1}) == _cache_key(one, {"id": 1})
