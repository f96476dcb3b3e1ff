"""The ``iogate`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from iogate.core.errors import ConfigError
from iogate.gateway.settings import Settings, load_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="iogate",
    help="Asyncio toolkit and HTTP gateway for database and external-API operations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals would include Settings and its secrets
)
err = Console(stderr=True)

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


def _load(config: Path | None) -> Settings:
    path = config or (
        Path(os.environ["IOGATE_CONFIG"]) if os.environ.get("IOGATE_CONFIG") else None
    )
    try:
        return load_settings(path)
    except ConfigError as exc:
        err.print(f"[bold red]config error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (overrides [gateway] host).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (overrides [gateway] port).", min=0, max=65535)
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes; with more than one, /metrics sums them all "
            "(Prometheus multiprocess mode) and /stats describes the answering worker.",
            min=1,
        ),
    ] = 1,
) -> None:
    """Serve the HTTP gateway (OpenAPI docs at /docs).

    Slow clients are cut off by [gateway] header_timeout, body_timeout and
    keep_alive_timeout (docs/configuration.md).
    """
    settings = _load(config)
    gateway = settings.gateway.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    settings = settings.model_copy(update={"gateway": gateway})
    if not gateway.is_loopback() and not gateway.api_keys:
        err.print(
            f"[bold red]refusing to bind {gateway.host}:[/] a non-loopback host requires "
            "[gateway] api_keys (configure [[gateway.api_keys]] or bind 127.0.0.1)",
            highlight=False,
        )
        raise typer.Exit(2)

    from iogate.gateway.app import create_app
    from iogate.gateway.server import build_config, run

    resources = [f"{name} ({db.type})" for name, db in settings.databases.items()]
    resources += [f"{name} (api)" for name in settings.apis]
    shown_host = f"[{gateway.host}]" if ":" in gateway.host else gateway.host
    err.print(
        f"iogate serving http://{shown_host}:{gateway.port} (docs at /docs) "
        f"with {', '.join(resources) or 'no resources'}",
        highlight=False,
        soft_wrap=True,
    )
    from iogate.gateway.logging import configure_logging, secrets_of

    configure_logging(level=log_level, secrets=secrets_of(settings))
    if workers > 1:
        _serve_workers(config, settings, workers, log_level)
        return
    run(build_config(create_app(settings), gateway, log_level=log_level))


def _serve_workers(config: Path | None, settings: Settings, workers: int, log_level: str) -> None:
    """Several uvicorn workers sharing one Prometheus multiprocess directory."""
    import tempfile

    from iogate.gateway.server import build_config, run

    path = config or (
        Path(os.environ["IOGATE_CONFIG"]) if os.environ.get("IOGATE_CONFIG") else None
    )
    metrics_dir = tempfile.mkdtemp(prefix="iogate-metrics-")
    # Read by the workers (and by prometheus-client at import) before they start.
    os.environ["IOGATE_CONFIG"] = str(path.resolve()) if path else ""
    # --host/--port given on the command line: the workers' Host allow-list
    # default depends on the bind address, so they must see the same one.
    os.environ["IOGATE_SERVE_HOST"] = settings.gateway.host
    os.environ["IOGATE_SERVE_PORT"] = str(settings.gateway.port)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        server_config = build_config(
            "iogate.gateway.app:app_from_environment",
            settings.gateway,
            log_level=log_level,
            workers=workers,
            factory=True,
        )
        run(server_config)
    finally:
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def check(
    config: ConfigOption = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds allowed to open and to ping each resource.", min=0.1)
    ] = 3.0,
) -> None:
    """Validate the config and ping every resource; exit 1 when anything fails."""
    from iogate.check import run_check

    path = config or (
        Path(os.environ["IOGATE_CONFIG"]) if os.environ.get("IOGATE_CONFIG") else None
    )
    raise typer.Exit(run_check(path, timeout=timeout))


@app.command()
def run(
    file: Annotated[
        Path,
        typer.Argument(
            help="Batch file: a JSON list of operations or {operations, concurrency, atomic}."
        ),
    ],
    config: ConfigOption = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write every Result as JSON here.")
    ] = None,
) -> None:
    """Run a batch file with a progress bar and a summary table (exit 1 if any failed)."""
    from iogate.run_command import run_batch_file

    raise typer.Exit(run_batch_file(file, _load(config), output))


@app.command()
def version() -> None:
    """Print the iogate version."""
    from iogate import __version__

    typer.echo(__version__)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
