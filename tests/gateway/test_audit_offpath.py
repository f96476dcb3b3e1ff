"""Logging off the request's path: ``BackgroundStreamHandler`` and ``log_line``.

The writer thread formats and writes; the request's thread only queues. What
must hold: nothing queued is lost when the process ends (a real ``iogate
serve`` stopped with SIGTERM right after its last answer, and a process that
exits with lines still queued), a full queue drops and counts instead of
blocking, and a line is the same JSON whichever way it went.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from iogate.gateway.logging import (
    BackgroundStreamHandler,
    JsonFormatter,
    RequestIdFilter,
    configure_logging,
    log_line,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@contextmanager
def own_root() -> Iterator[None]:
    """The root logger to ourselves for a test's body: pytest's capturing
    handlers (added for each phase) would be other receivers, and a direct
    line only goes where nothing else listens."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for handler in handlers:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


# -- a real gateway --------------------------------------------------------------


def test_sigterm_right_after_the_last_answer_loses_no_audit_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "iogate.toml"
    config.write_text(
        f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[databases.main]\ntype = "sqlite"\npath = "{tmp_path / "main.db"}"\n',
        encoding="utf-8",
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        # The default log level: access, audit and operation lines for every request.
        process = subprocess.Popen(
            [sys.executable, "-m", "iogate.cli", "serve", "--config", str(config)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # polling a subprocess: nothing to await
        ids = [uuid.uuid4().hex for _ in range(400)]

        def send(client: httpx.Client, request_id: str) -> int:
            response = client.post(
                "/database/execute",
                json={"db_name": "main", "query": "SELECT 1 AS one"},
                headers={"X-Request-ID": request_id},
            )
            return response.status_code

        with (
            httpx.Client(base_url=base, timeout=30) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            statuses = list(pool.map(lambda rid: send(client, rid), ids))
        assert statuses == [200] * len(ids)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-3000:]
    records = lines(log.read_text())
    wanted = set(ids)
    for logger in ("iogate.audit", "iogate.access", "iogate.operation"):
        # /health (the start-up poll) has its lines too: only this test's ids count.
        seen = [
            r["request_id"]
            for r in records
            if r.get("logger") == logger and r["request_id"] in wanted
        ]
        assert sorted(seen) == sorted(ids), f"{logger}: {len(seen)} lines for {len(ids)} requests"
    audit = next(
        r for r in records if r.get("logger") == "iogate.audit" and r["request_id"] == ids[0]
    )
    assert audit["path"] == "/database/execute"
    assert audit["resources"] == ["db:main"]
    assert not any(r.get("logger") == "iogate.logging" for r in records)  # nothing dropped


def test_lines_still_queued_at_exit_are_written(tmp_path: Path) -> None:
    """The writer sleeps for an hour: only ``logging.shutdown`` at exit can write them."""
    out = tmp_path / "out.log"
    script = textwrap.dedent(
        f"""
        import logging
        from iogate.gateway.logging import BackgroundStreamHandler, JsonFormatter, log_line
        stream = open({str(out)!r}, "w")
        handler = BackgroundStreamHandler(stream, flush_interval=3600)
        handler.setFormatter(JsonFormatter())
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        for n in range(2000):
            logging.getLogger("iogate.audit").info("line %d", n, extra={{"fields": {{"n": n}}}})
        assert handler.queued == 2000, handler.queued
        """
    )
    subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
        check=True,
    )
    assert [r["n"] for r in lines(out.read_text())] == list(range(2000))


# -- the bounded queue -------------------------------------------------------------


class StuckStream(io.StringIO):
    """A stream whose writes wait until released, as a full pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(30)
        return super().write(text)


def test_a_full_queue_drops_and_counts_without_blocking_the_caller() -> None:
    with own_root():
        stream = StuckStream()
        handler = BackgroundStreamHandler(stream, capacity=10, flush_interval=0.01)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(RequestIdFilter())
        logger = logging.getLogger("iogate.test.offpath")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            logger.info("first")
            assert stream.entered.wait(10)  # the writer is stuck writing "first"
            started = time.perf_counter()
            for n in range(25):
                logger.info("queued %d", n)
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0  # the caller never waited for the stuck writer
            assert handler.queued == 10
            assert handler.dropped == 15
            stream.release.set()
            handler.flush()
        finally:
            stream.release.set()
            logger.removeHandler(handler)
            logger.propagate = True
            handler.close()
        written = lines(stream.getvalue())
        assert [r["message"] for r in written[:11]] == ["first"] + [
            f"queued {n}" for n in range(10)
        ]
        (warning,) = written[11:]
        assert warning["logger"] == "iogate.logging"
        assert warning["level"] == "WARNING"
        assert warning["dropped"] == 15
        assert warning["message"] == "15 log records dropped: the log stream did not keep up"


# -- one line, either way ------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_direct_line_is_the_json_the_record_would_have_been() -> None:
    with own_root():
        fields = {"method": "POST", "path": "/x", "status": 200, "duration_ms": 1.5, "key": None}
        args = ("POST", "/x", 200)
        logger = logging.getLogger("iogate.audit")

        direct = io.StringIO()
        handler = configure_logging(level="INFO", json=True, stream=direct, background=True)
        assert isinstance(handler, BackgroundStreamHandler)
        assert handler.sole_receiver(logger, logging.INFO)
        log_line(logger, logging.INFO, "%s %s %s", args, fields, "rid-1")
        handler.flush()

        # Another handler listening: the ordinary LogRecord goes to both.
        collect = Collect()
        logging.getLogger().addHandler(collect)
        try:
            assert not handler.sole_receiver(logger, logging.INFO)
            log_line(logger, logging.INFO, "%s %s %s", args, fields, "rid-1")
            handler.flush()
        finally:
            logging.getLogger().removeHandler(collect)
        first, second = lines(direct.getvalue())
        first.pop("ts")
        second.pop("ts")
        assert first == second
        assert first["message"] == "POST /x 200"
        assert first["request_id"] == "rid-1"
        (record,) = collect.records
        assert record.name == "iogate.audit"
        assert record.fields == fields  # type: ignore[attr-defined]
        assert record.request_id == "rid-1"  # type: ignore[attr-defined]


def test_secrets_in_a_direct_line_are_masked() -> None:
    with own_root():
        stream = io.StringIO()
        handler = configure_logging(
            level="INFO", json=True, stream=stream, background=True, secrets=["hunter2-secret"]
        )
        log_line(
            logging.getLogger("iogate.access"),
            logging.INFO,
            "GET %s",
            ("/x/hunter2-secret",),
            {"path": "/x/hunter2-secret", "token": "Bearer abc.def", "n": 1},
        )
        handler.flush()
        (line,) = lines(stream.getvalue())
        assert "hunter2-secret" not in stream.getvalue()
        assert line["path"] == "/x/***"
        assert line["token"] == "Bearer ***"
        assert line["n"] == 1


def test_mutable_arguments_and_tracebacks_are_taken_when_logged() -> None:
    with own_root():
        stream = io.StringIO()
        handler = configure_logging(level="INFO", json=True, stream=stream, background=True)
        log = logging.getLogger("iogate.test.offpath")
        names = ["a"]
        log.info("names %s", names)
        names.append("b")  # after the call: must not show
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        handler.flush()
        shown, failed = lines(stream.getvalue())
        assert shown["message"] == "names ['a']"
        assert "RuntimeError: boom" in failed["exception"]


def test_closing_restores_the_caller_info_switches() -> None:
    with own_root():
        before = logging._srcfile  # type: ignore[attr-defined]
        handler = configure_logging(level="INFO", stream=io.StringIO(), background=True)
        assert logging._srcfile is None  # type: ignore[attr-defined]
        assert logging.logThreads is False
        logging.getLogger().removeHandler(handler)
        handler.close()
        assert logging._srcfile == before  # type: ignore[attr-defined]
        assert logging.logThreads is True
