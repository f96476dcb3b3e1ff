"""iogate.compat: the seed names, one package, each imported on first use."""

from __future__ import annotations

import importlib

import pytest

import iogate
from iogate import compat
from iogate.backends.http import ExternalAPISession
from iogate.backends.memory import AsyncMemoryManager
from iogate.compat.context import get_api_session, get_database_connection
from iogate.core.errors import ResourceNotFoundError
from iogate.core.resource import ResourceState
from iogate.orchestrator import AsyncOperationOrchestrator

COMPAT_ALL = [
    "API_OPERATION_DURATION",
    "API_OPERATION_ERRORS",
    "DB_OPERATION_DURATION",
    "DB_OPERATION_ERRORS",
    "DatabaseConnectionPool",
    "ExternalAPISession",
    "circuit_breaker_api_call",
    "execute_with_retry",
    "get_api_session",
    "get_database_connection",
    "resilient_api_operation",
    "resilient_database_operation",
    "track_api_operation",
    "track_database_operation",
]


def test_compat_all_is_the_pinned_sorted_list() -> None:
    assert compat.__all__ == COMPAT_ALL


def test_every_compat_name_resolves_to_its_module_object() -> None:
    for name in compat.__all__:
        module = importlib.import_module(compat._EXPORTS[name])
        assert getattr(compat, name) is getattr(module, name), name


def test_the_facade_hands_out_the_compat_objects() -> None:
    for name in set(compat.__all__) & set(iogate.__all__):
        assert getattr(iogate, name) is getattr(compat, name), name


def test_external_api_session_is_the_http_backends() -> None:
    assert compat.ExternalAPISession is ExternalAPISession


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"'iogate\.compat' has no attribute 'nope'"):
        compat.nope  # noqa: B018
    with pytest.raises(AttributeError, match="'iogate' has no attribute 'nope'"):
        iogate.nope  # noqa: B018


def test_dir_lists_every_public_name_before_it_is_loaded() -> None:
    assert set(compat.__all__) <= set(dir(compat))
    assert set(iogate.__all__) <= set(dir(iogate))


async def test_get_database_connection_opens_the_named_manager() -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        store = orchestrator.add_manager("store", AsyncMemoryManager())
        assert store.state is ResourceState.UNOPENED
        async with get_database_connection("store") as db_manager:
            assert db_manager is store
            assert store.state is ResourceState.OPEN
            set_key = {"operation": "set", "key": "k", "value": "v"}
            assert (await db_manager.execute_query("k", set_key)).success
        assert store.state is ResourceState.OPEN  # the orchestrator owns it, not the block
    assert store.state is ResourceState.CLOSED


async def test_get_api_session_hands_out_the_named_api_manager() -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        api = await orchestrator.add_api_manager("external_api", "http://127.0.0.1:9/")
        async with get_api_session("external_api") as api_manager:
            assert api_manager is api


async def test_an_explicit_orchestrator_wins_over_the_current_one() -> None:
    async with AsyncOperationOrchestrator() as first:
        store = first.add_manager("store", AsyncMemoryManager())
        async with AsyncOperationOrchestrator():  # now the current one
            async with get_database_connection("store", orchestrator=first) as db_manager:
                assert db_manager is store
            with pytest.raises(ResourceNotFoundError):
                async with get_database_connection("store"):
                    pass
