"""Run the documentation as written: code blocks read from the Markdown files
(never copied into tests), so a doc edit that breaks an example fails a test.

- ``blocks(path)``: the fenced code blocks of a Markdown file (markdown-it-py,
  the CommonMark parser rich already depends on), each with its language,
  line, section heading and the HTML comment just before it, if any
  (``<!-- fragment -->`` marks a Python block that is not self-contained).
- ``run_curl_block``: runs a ``bash`` block as written, with ``curl`` wrapped
  by a shell function that appends the HTTP status to each answer; a command
  whose last line ends with ``# NNN`` must answer NNN, any other one 2xx.
- ``matches``: a documented JSON answer against the real one.
- ``run_python_block``: a Python block with top-level ``await``, in a fresh
  namespace.
- ``Gateway``: a real ``iogate serve`` process in a working directory.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from markdown_it import MarkdownIt

from iogate.core.result import Result

ROOT = Path(__file__).resolve().parents[2]
# Fields whose value differs from run to run; compared by presence only.
VOLATILE = frozenset({"duration_ms", "uptime_s", "latency_ms", "headers", "throughput_per_s"})


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    section: str
    marker: str  # the HTML comment just before the block, without <!-- -->

    @property
    def where(self) -> str:
        return f"line {self.line} ({self.section})"


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def blocks(path: Path) -> list[Block]:
    tokens = _parser().parse(path.read_text())
    found: list[Block] = []
    section = ""
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            section = tokens[index + 1].content
        if token.type != "fence" or token.map is None:
            continue
        previous = tokens[index - 1] if index else None
        marker = ""
        if previous is not None and previous.type == "html_block":
            comment = re.fullmatch(r"\s*<!--(.*?)-->\s*", previous.content, re.DOTALL)
            marker = comment.group(1).strip() if comment else ""
        found.append(
            Block(
                token.info.strip().split(" ")[0], token.content, token.map[0] + 1, section, marker
            )
        )
    return found


def table_first_column(path: Path, heading: str) -> list[str]:
    """The first cell of each body row of the first table under ``heading``."""
    tokens = _parser().parse(path.read_text())
    cells: list[str] = []
    under = False
    in_body = False
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            if under and cells:
                break
            under = tokens[index + 1].content == heading
        elif under and token.type == "tbody_open":
            in_body = True
        elif under and token.type == "tbody_close":
            break
        elif in_body and token.type == "tr_open":
            cells.append(tokens[index + 2].content)
    return cells


# -- curl --------------------------------------------------------------------------------

_STATUS_MARK = "@@@status="
CURL_WRAPPER = f'curl() {{ command curl -w "\\n{_STATUS_MARK}%{{http_code}}\\n" "$@"; }}\n'


@dataclass
class CurlCall:
    command: str
    expected: int | None  # None: any 2xx
    status: int = 0
    body: str = ""

    def ok(self) -> bool:
        if self.expected is None:
            return 200 <= self.status < 300
        return self.status == self.expected


def curl_commands(code: str) -> list[CurlCall]:
    """The block's ``curl`` commands (continuation lines joined) and the statuses expected."""
    calls = []
    logical = ""
    for line in code.splitlines():
        logical += line
        if line.rstrip().endswith("\\"):
            logical = logical.rstrip()[:-1] + " "
            continue
        command, logical = logical.strip(), ""
        if command.startswith("curl "):
            expected = re.search(r"#\s*(\d{3})\b[^'\"]*$", command)
            calls.append(CurlCall(command, int(expected.group(1)) if expected else None))
    return calls


def run_curl_block(
    code: str, *, env: Mapping[str, str], cwd: Path, timeout: float = 30
) -> list[CurlCall]:
    calls = curl_commands(code)
    completed = subprocess.run(
        ["bash", "-c", CURL_WRAPPER + code],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, (code, completed.stderr)
    parts = completed.stdout.split(f"\n{_STATUS_MARK}")
    answers = parts[:-1]
    statuses = [re.match(r"(\d{3})", part) for part in parts[1:]]
    assert len(answers) == len(calls), (code, completed.stdout[-2000:])
    for index, (call, match) in enumerate(zip(calls, statuses, strict=True)):
        assert match is not None, completed.stdout
        call.status = int(match.group(1))
        body = answers[index]
        if index:  # after the previous status line
            body = body.split("\n", 1)[1] if "\n" in body else ""
        call.body = body
    return calls


def with_port(text: str, port: int) -> str:
    """The docs use port 8080; the tests a free one."""
    return (
        text.replace("localhost:8080", f"localhost:{port}")
        .replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        .replace("port = 8080", f"port = {port}")
    )


# -- JSON answers ------------------------------------------------------------------------


def matches(documented: Any, actual: Any, path: str = "$") -> list[str]:
    """Where ``actual`` differs from what the docs show.

    A documented object may leave keys out (an abridged answer) but may not
    show one that is absent; a documented list is compared with the first
    items of the real one; values of VOLATILE keys are not compared.
    """
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{path}: documented an object, got {actual!r}"]
        problems = []
        for key, value in documented.items():
            if key not in actual:
                problems.append(f"{path}.{key}: documented, absent from {sorted(actual)}")
            elif key not in VOLATILE:
                problems += matches(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(documented, list):
        if not isinstance(actual, list) or len(actual) < len(documented):
            return [f"{path}: documented {documented!r}, got {actual!r}"]
        return [
            problem
            for index, item in enumerate(documented)
            for problem in matches(item, actual[index], f"{path}[{index}]")
        ]
    if documented != actual:
        return [f"{path}: documented {documented!r}, got {actual!r}"]
    return []


# -- Python ------------------------------------------------------------------------------


@dataclass
class PythonRun:
    namespace: dict[str, Any] = field(default_factory=dict)

    def results(self) -> dict[str, Result]:
        """Every Result the example left in a variable (lists of Results too)."""
        found: dict[str, Result] = {}
        for name, value in self.namespace.items():
            if isinstance(value, Result):
                found[name] = value
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, Result):
                        found[f"{name}[{index}]"] = item
        return found


async def run_python_block(code: str, filename: str) -> PythonRun:
    """Run ``code`` (top-level ``await`` allowed) in a fresh namespace."""
    compiled = compile(code, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    run = PythonRun({"__name__": "__doc_example__"})
    outcome = eval(compiled, run.namespace)
    if asyncio.iscoroutine(outcome):
        await outcome
    return run


# -- a real gateway ----------------------------------------------------------------------


def free_port() -> int:
    from tests.conftest import free_port as pick

    return pick()


@contextlib.asynccontextmanager
async def gateway(
    args: list[str], *, cwd: Path, port: int, env: Mapping[str, str] | None = None
) -> AsyncIterator[str]:
    """``iogate serve ARGS`` in ``cwd``; yields its base URL once ``/health`` answers."""
    log_path = cwd / "gateway.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "iogate.cli",
            "serve",
            *args,
            cwd=cwd,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:
                deadline = time.monotonic() + 30
                while True:
                    if process.returncode is not None:
                        pytest.fail(f"gateway exited: {log_path.read_text()}")
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health")).status_code == 200:
                            break
                    if time.monotonic() > deadline:
                        pytest.fail(f"gateway did not start: {log_path.read_text()}")
                    await asyncio.sleep(0.05)
            yield base
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
