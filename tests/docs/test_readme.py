"""The README as a new user meets it: its first screen, the tour run as
written against a real ``iogate serve`` with the embedded default config
(what ``make run`` starts), its Python example against a real PostgreSQL,
``make run PORT=...``, the services ``make test`` needs, and links only to
files the user has.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.docs.conftest import substitute
from tests.docs.support import (
    ROOT,
    blocks,
    curl_commands,
    free_port,
    gateway,
    matches,
    run_curl_block,
    run_python_block,
    with_port,
)

README = ROOT / "README.md"
FIRST_SCREEN_LINES = 45


def test_the_first_screen_shows_run_test_and_the_tour() -> None:
    first = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])
    assert "make run" in first
    assert "make test" in first
    assert "## 60-second tour" in first
    assert first.count("curl -s") >= 4


def test_links_point_at_files_of_the_repository() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which is not in the repo"
    # Documents a user of the repository does not have.
    for absent in ("../shared", "DESIGN.md", "STYLE.md", "seed"):
        assert absent not in text, absent


def test_it_names_every_service_the_tests_look_for() -> None:
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    variables = set(re.findall(r"IOGATE_TEST_[A-Z]+_URL", conftest))
    assert variables >= {"IOGATE_TEST_POSTGRES_URL", "IOGATE_TEST_REDIS_URL"}
    text = README.read_text()
    for variable in variables | {"IOGATE_REQUIRE_SERVICES"}:
        assert variable in text, variable


def test_make_run_takes_a_port() -> None:
    if shutil.which("make") is None:
        pytest.fail("make is not installed")  # `make test` needs it anyway

    def dry_run(*args: str) -> str:
        # Under `make test` this is a nested make: drop the parent's flags and
        # its "Entering directory" lines, keep the recipe's command.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        done = subprocess.run(
            ["make", "-n", "--no-print-directory", "run", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        commands = [line for line in done.stdout.splitlines() if "iogate" in line]
        assert commands, done.stdout
        return commands[-1]

    assert "make run PORT=9000" in README.read_text()
    command = dry_run("PORT=9123")
    assert "iogate serve" in command
    assert "--port 9123" in command
    assert "--port" not in dry_run()
    assert "--config cfg.toml" in dry_run("IOGATE_CONFIG=cfg.toml")


async def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    page = blocks(README)
    tour = [b for b in page if b.lang == "bash" and curl_commands(b.code)]
    assert len(tour) >= 2
    problems: list[str] = []
    # `make run`: the embedded default config, in the current directory.
    async with gateway(["--port", str(port)], cwd=tmp_path, port=port):
        for index, block in enumerate(page):
            if block not in tour:
                continue
            calls = run_curl_block(with_port(block.code, port), env={}, cwd=tmp_path)
            problems += [
                f"{block.where}: {c.command[:80]} answered {c.status}: {c.body[:200]}"
                for c in calls
                if not c.ok()
            ]
            following = page[index + 1] if index + 1 < len(page) else None
            if following is not None and following.lang == "json":
                documented = json.loads(following.code)
                problems += matches(documented, json.loads(calls[-1].body))
    assert problems == []
    assert (tmp_path / "iogate.db").exists()  # the default's SQLite file, where make run runs


async def test_the_library_example_runs_as_written(
    doc_addresses: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (example,) = [b for b in blocks(README) if b.lang == "python"]
    run = await run_python_block(substitute(example.code, doc_addresses), "README.md")
    result = run.namespace["result"]
    assert result.success, (result.error_type, result.error)
    assert result.data == [{"id": 1, "name": "ada"}]  # as the example's comment shows
