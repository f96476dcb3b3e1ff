"""OpenTelemetry spans of library operations (iogate.tracing), read with the
SDK's InMemorySpanExporter, against the real PostgreSQL, SQLite and Redis and a
real local HTTP upstream that records the ``traceparent`` it receives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from iogate import (
    AsyncAPIManager,
    AsyncPostgreSQLManager,
    AsyncRedisManager,
    AsyncSQLiteManager,
)
from iogate.core import events
from iogate.orchestrator import AsyncOperationOrchestrator
from iogate.tracing import (
    IogateTracer,
    disable_tracing,
    enable_tracing,
    provider_from_settings,
    sql_operation_name,
)

ROOT = Path(__file__).resolve().parents[2]


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.caller = self.provider.get_tracer("test")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        matches = [s for s in self.finished() if s.name == name]
        assert len(matches) == 1, [s.name for s in self.finished()]
        return matches[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    recorder = Spans()
    enable_tracing(recorder.provider)
    try:
        yield recorder
    finally:
        disable_tracing()
        recorder.provider.shutdown()


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- databases -------------------------------------------------------------------


async def test_postgres_operation_is_a_client_span_with_db_conventions(
    spans: Spans, pg_manager: AsyncPostgreSQLManager
) -> None:
    result = await pg_manager.execute_query("SELECT $1::int AS n, 'hidden' AS v", [41])
    assert result.success
    span = spans.named("SELECT test")
    assert span.kind is SpanKind.CLIENT
    attrs = attributes(span)
    assert attrs["db.system"] == attrs["db.system.name"] == "postgresql"
    assert attrs["db.operation.name"] == "SELECT"
    assert attrs["db.namespace"] == "test"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == 5432
    assert attrs["db.response.returned_rows"] == 1
    assert attrs["iogate.resource"] == pg_manager.name
    # No statement text and no parameter value unless switched on.
    assert not any(key.startswith("db.query") for key in attrs)
    assert "41" not in repr(attrs)
    assert "hidden" not in repr(attrs)
    assert span.status.status_code is StatusCode.UNSET


async def test_a_failed_statement_sets_error_type_and_the_error_status(
    spans: Spans, pg_manager: AsyncPostgreSQLManager
) -> None:
    result = await pg_manager.execute_query("SELECT * FROM no_such_table_for_tracing")
    assert not result.success
    span = spans.named("SELECT test")
    assert attributes(span)["error.type"] == result.error_type == "query_error"
    assert span.status.status_code is StatusCode.ERROR


async def test_statements_and_parameters_are_recorded_only_when_enabled(
    spans: Spans, pg_manager: AsyncPostgreSQLManager
) -> None:
    enable_tracing(spans.provider, record_statements=True, record_parameters=True)
    await pg_manager.execute_query("/* label */ select $1::text", ["visible"])
    attrs = attributes(spans.named("SELECT test"))
    assert attrs["db.query.text"] == "/* label */ select $1::text"
    assert attrs["db.query.parameter.1"] == "visible"


async def test_sqlite_span_names_the_file_and_no_server(spans: Spans, tmp_path: Path) -> None:
    path = str(tmp_path / "traced.db")
    async with AsyncSQLiteManager(path) as manager:
        await manager.execute_query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        await manager.execute_query("INSERT INTO t (id) VALUES (?)", [1])
    create = spans.named(f"CREATE {path}")
    insert = spans.named(f"INSERT {path}")
    for span in (create, insert):
        attrs = attributes(span)
        assert attrs["db.system"] == "sqlite"
        assert attrs["db.namespace"] == path
        assert "server.address" not in attrs


async def test_redis_span_names_the_command(spans: Spans, redis_url: str) -> None:
    async with AsyncRedisManager(redis_url) as manager:
        await manager.execute_query("k", {"operation": "set", "key": "iogate:trace", "value": "v"})
        await manager.execute_query("k", {"operation": "get", "key": "iogate:trace"})
        await manager.execute_query("k", {"operation": "delete", "key": "iogate:trace"})
    names = [s.name for s in spans.finished()]
    assert names == ["SET 15", "GET 15", "DELETE 15"]
    attrs = attributes(spans.finished()[1])
    assert attrs["db.system"] == "redis"
    assert attrs["db.operation.name"] == "GET"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == 6379


async def test_transaction_statements_are_spans_under_the_caller(
    spans: Spans, pg_manager: AsyncPostgreSQLManager
) -> None:
    with spans.caller.start_as_current_span("caller") as caller:
        async with pg_manager.transaction() as tx:
            await tx.execute_query("SELECT 1")
            await tx.execute_query("SELECT 2")
    statements = [s for s in spans.finished() if s.name == "SELECT test"]
    assert len(statements) == 2
    for span in statements:
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id


async def test_a_cancelled_operation_ends_its_span_and_restores_the_context(
    spans: Spans, pg_manager: AsyncPostgreSQLManager
) -> None:
    from opentelemetry import trace

    with spans.caller.start_as_current_span("caller") as caller:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pg_manager.execute_query("SELECT pg_sleep(5)")
        # The next span is the caller's child again, not the dead query's.
        assert trace.get_current_span() is caller
        await pg_manager.execute_query("SELECT 1")
    cancelled, after = [s for s in spans.finished() if s.name == "SELECT test"]
    assert attributes(cancelled)["error.type"] == "CancelledError"
    assert cancelled.status.status_code is StatusCode.ERROR
    assert after.parent is not None
    assert after.parent.span_id == caller.get_span_context().span_id


def test_the_operation_name_is_the_first_keyword_after_comments() -> None:
    assert sql_operation_name("  -- why\n/* a */ with x as (select 1) select * from x") == "WITH"
    assert sql_operation_name("insert into t values (1)") == "INSERT"
    assert sql_operation_name("(select 1)") is None
    assert sql_operation_name("") is None


# -- APIs ------------------------------------------------------------------------


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        status = 500 if request.path.endswith("/fail") else 200
        return web.json_response({"path": request.path}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_api_span_and_the_upstream_receives_the_callers_trace(
    spans: Spans, upstream: tuple[str, list[dict[str, str]]]
) -> None:
    base_url, seen = upstream
    from opentelemetry import baggage, context

    async with AsyncAPIManager(base_url, name="ext", retry={"attempts": 1}) as api:
        # Baggage a gateway client sent stays here: only the trace context travels.
        token = context.attach(baggage.set_baggage("user", "client-supplied"))
        try:
            with spans.caller.start_as_current_span("caller") as caller:
                ok = await api.get("/users/1", params={"token": "never-recorded"})
                failed = await api.post("/fail", data={"x": 1})
        finally:
            context.detach(token)
    assert ok.success
    assert not failed.success
    get, post = (s for s in spans.finished() if s.name in ("GET", "POST"))
    trace_id = format_trace_id(caller.get_span_context().trace_id)
    for span, headers in zip((get, post), seen, strict=True):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == caller.get_span_context().span_id
        version, received_trace, parent_id, _flags = headers["traceparent"].split("-")
        assert (version, received_trace) == ("00", trace_id)
        # The upstream's parent is the operation's span: its spans nest under it.
        assert parent_id == format_span_id(span.context.span_id)
        assert "baggage" not in {name.lower() for name in headers}
    attrs = attributes(get)
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.response.status_code"] == 200
    assert attrs["server.address"] == "127.0.0.1"
    assert "db.response.returned_rows" not in attrs
    assert "url.full" not in attrs
    assert "never-recorded" not in repr(attrs)
    failed_attrs = attributes(post)
    assert failed_attrs["http.response.status_code"] == 500
    assert failed_attrs["error.type"] == failed.error_type == "http_error"
    assert post.status.status_code is StatusCode.ERROR


# -- batches and named operations -------------------------------------------------


async def test_a_batch_span_holds_its_operations(spans: Spans, tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        orchestrator.add_manager("lite", AsyncSQLiteManager(str(tmp_path / "b.db")))
        results = await orchestrator.execute_batch_operations(
            [
                {"type": "database", "db_name": "lite", "query": "SELECT 1 AS one"},
                {"type": "database", "db_name": "lite", "query": "SELECT * FROM missing"},
            ]
        )
    assert [r.success for r in results] == [True, False]
    batch = spans.named("batch")
    attrs = attributes(batch)
    assert attrs["iogate.batch.size"] == 2
    assert attrs["iogate.batch.atomic"] is False
    assert attrs["iogate.batch.failed"] == 1
    assert batch.status.status_code is StatusCode.ERROR
    children = [
        s for s in spans.finished() if s.parent and s.parent.span_id == batch.context.span_id
    ]
    assert sorted(s.name for s in children) == sorted([f"SELECT {tmp_path / 'b.db'}"] * 2)


async def test_a_named_operation_span_holds_its_query(spans: Spans, tmp_path: Path) -> None:
    async with AsyncOperationOrchestrator() as orchestrator:
        orchestrator.add_manager("lite", AsyncSQLiteManager(str(tmp_path / "n.db")))
        orchestrator.register_operation(
            "double", database="lite", query="SELECT ? * 2 AS doubled", params=["n"]
        )
        result = await orchestrator.execute_named_operation("double", {"n": 21})
    assert result.success
    assert result.data == [{"doubled": 42}]
    operation = spans.named("operation double")
    assert operation.kind is SpanKind.INTERNAL
    query = spans.named(f"SELECT {tmp_path / 'n.db'}")
    assert query.parent is not None
    assert query.parent.span_id == operation.context.span_id


# -- exporters -------------------------------------------------------------------


class Collector(BaseHTTPRequestHandler):
    """A local OTLP/HTTP endpoint: keeps every ExportTraceServiceRequest body."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        Collector.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_the_otlp_exporter_sends_iogate_spans(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    Collector.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    provider = provider_from_settings(
        exporter="otlp",
        service_name="iogate-test",
        otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1/traces",
    )
    try:
        enable_tracing(provider)
        async with AsyncSQLiteManager(str(tmp_path / "otlp.db")) as manager:
            await manager.execute_query("SELECT 1")
        # The exporter's HTTP call blocks: off the event loop.
        assert await asyncio.to_thread(provider.force_flush, 10_000)
    finally:
        disable_tracing()
        await asyncio.to_thread(provider.shutdown)
        server.shutdown()
        server.server_close()
    names = []
    for body in Collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                "service.name"
            ]
            assert service == "iogate-test"
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "iogate"
                names += [span.name for span in scope_spans.spans]
    assert names == [f"SELECT {tmp_path / 'otlp.db'}"]


# -- off ---------------------------------------------------------------------------


def test_without_tracing_nothing_imports_opentelemetry(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from iogate import AsyncSQLiteManager
        from iogate.core import events

        async def main():
            async with AsyncSQLiteManager({str(tmp_path / "off.db")!r}) as db:
                assert (await db.execute_query("SELECT 1")).success
        asyncio.run(main())
        assert events.tracer is None
        loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "iogate.tracing")))
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    )
    assert done.stdout.strip() == "loaded: []", done.stdout + done.stderr


def test_the_tracer_is_what_enable_installs() -> None:
    provider = TracerProvider()
    try:
        tracer = enable_tracing(provider)
        assert isinstance(tracer, IogateTracer)
        assert events.tracer is tracer
        disable_tracing()
        assert events.tracer is None
    finally:
        disable_tracing()
        provider.shutdown()
