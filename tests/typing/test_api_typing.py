"""``mypy --strict`` accepts ``api.py``, the public API as a user writes it.

mypy runs in-process from the repository root, so it reads pyproject.toml
and checks against this checkout's ``src``; a public signature that changes
under code written like ``api.py`` fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
API = Path(__file__).with_name("api.py")


def _mypy(monkeypatch: pytest.MonkeyPatch, path: Path) -> tuple[str, int]:
    monkeypatch.chdir(ROOT)  # pyproject.toml's mypy_path ("src") is relative to the cwd
    out, err, status = api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(path),
        ]
    )
    return out + err, status


def test_the_public_api_type_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    output, status = _mypy(monkeypatch, API)
    assert status == 0, output
    assert "Success: no issues found in 1 source file" in output, output


def test_a_wrong_assert_type_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from typing import assert_type\n"
        "from iogate import Result\n\n"
        "def fields(result: Result) -> None:\n"
        "    assert_type(result.success, str)\n"
    )
    output, status = _mypy(monkeypatch, wrong)
    assert status == 1, output
    assert "[assert-type]" in output, output
