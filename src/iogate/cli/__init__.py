"""The ``iogate`` command (``python -m iogate.cli`` works too).

Each command lives in its own module and registers itself on the one Typer
app (``iogate.cli.common``) when imported here.
"""

from __future__ import annotations

import sys

from iogate.cli import commands, serve  # noqa: F401  (they register the commands)
from iogate.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
