"""Manager options are typed: mypy refuses a misspelt keyword (it used to pass as ``**Any``)."""

from __future__ import annotations

from pathlib import Path

from mypy import api

GOOD = """
from iogate import AsyncOperationOrchestrator

async def main(orch: AsyncOperationOrchestrator) -> None:
    await orch.add_api_manager("crm", "https://crm.example", timeout=3.0, max_connections=5)
    await orch.add_database_manager("db", "postgresql", "postgresql://h/db", statement_timeout=2)
"""

BAD = """
from iogate import AsyncOperationOrchestrator

async def main(orch: AsyncOperationOrchestrator) -> None:
    await orch.add_api_manager("crm", "https://crm.example", timout=3.0)
    await orch.add_database_manager("db", "postgresql", "postgresql://h/db", max_conections=5)
"""


def _mypy(tmp_path: Path, source: str) -> tuple[str, int]:
    path = tmp_path / "snippet.py"
    path.write_text(source)
    cache = Path(__file__).resolve().parents[2] / ".mypy_cache"
    out, err, status = api.run(["--strict", "--cache-dir", str(cache), str(path)])
    return out + err, status


def test_known_options_type_check(tmp_path: Path) -> None:
    output, status = _mypy(tmp_path, GOOD)
    assert status == 0, output


def test_misspelt_options_are_type_errors(tmp_path: Path) -> None:
    output, status = _mypy(tmp_path, BAD)
    assert status == 1, output
    assert '"timout"' in output, output
    assert '"max_conections"' in output, output
