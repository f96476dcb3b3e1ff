"""What every ``iogate`` command shares: the Typer app, the --config option, one-line failures.

Every problem with the config (a value, a URL, a scope, the bind address)
is one line on stderr naming the key path, with exit status 2, before
anything says "serving".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from iogate.core.errors import ConfigError
from iogate.gateway.settings import Settings

__all__ = ["EXIT_CONFIG", "ConfigOption", "app", "config_path", "err", "fail", "load", "with_bind"]

app = typer.Typer(
    name="iogate",
    help="Asyncio toolkit and HTTP gateway for database and external-API operations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would include Settings and its secrets
    # Help texts name TOML tables ([gateway], [[gateway.api_keys]]): plain text,
    # not Rich markup, which would swallow them.
    rich_markup_mode=None,
)
err = Console(stderr=True)
EXIT_CONFIG = 2

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (iogate.toml). Default: $IOGATE_CONFIG, else the embedded default "
        "(SQLite 'main' at ./iogate.db, memory 'cache', loopback only).",
        show_default=False,
    ),
]


def config_path(config: Path | None) -> Path | None:
    return config or (
        Path(os.environ["IOGATE_CONFIG"]) if os.environ.get("IOGATE_CONFIG") else None
    )


def fail(label: str, message: str) -> typer.Exit:
    """Print ``label: message`` as one line on stderr; the Exit (status 2) to raise."""
    line = " ".join(message.split())
    err.print(f"[bold red]{label}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_CONFIG)


def load(config: Path | None) -> Settings:
    """The settings, every value validated and every manager buildable (exit 2 if not)."""
    from iogate.gateway.app import load_checked

    try:
        return load_checked(config_path(config))
    except ConfigError as exc:
        raise fail("config error", str(exc)) from None


def with_bind(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``--host``/``--port`` over ``[gateway]``, refusing a non-loopback host without keys."""
    gateway = settings.gateway.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    if not gateway.is_loopback() and not gateway.api_keys:
        # The brackets are TOML, not Rich markup: fail() escapes them.
        raise ConfigError(
            f"refusing to bind {gateway.host}: a non-loopback host requires [gateway] api_keys "
            "(configure [[gateway.api_keys]] or bind 127.0.0.1)"
        )
    return settings.model_copy(update={"gateway": gateway})
