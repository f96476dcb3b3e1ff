"""The ``iogate`` command.

Every problem with the config (a value, a URL, a scope, the bind address)
is one line on stderr naming the key path, with exit status 2, before
anything says "serving". ``serve`` reloads the config on SIGHUP and drains
on SIGTERM (docs/configuration.md, "Reload and shutdown").
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from iogate.core.errors import ConfigError
from iogate.gateway.settings import Settings

__all__ = ["app", "main"]

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


def _config_path(config: Path | None) -> Path | None:
    return config or (
        Path(os.environ["IOGATE_CONFIG"]) if os.environ.get("IOGATE_CONFIG") else None
    )


def fail(label: str, message: str) -> typer.Exit:
    """Print ``label: message`` as one line on stderr; the Exit (status 2) to raise."""
    line = " ".join(message.split())
    err.print(f"[bold red]{label}:[/] {escape(line)}", highlight=False, soft_wrap=True)
    return typer.Exit(EXIT_CONFIG)


def _load(config: Path | None) -> Settings:
    """The settings, every value validated and every manager buildable (exit 2 if not)."""
    from iogate.gateway.app import load_checked

    try:
        return load_checked(_config_path(config))
    except ConfigError as exc:
        raise fail("config error", str(exc)) from None


def _with_bind(settings: Settings, host: str | None, port: int | None) -> Settings:
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
            "(Prometheus multiprocess mode) and /stats sums them too, listing each under "
            "workers.",
            min=1,
        ),
    ] = 1,
) -> None:
    """Serve the HTTP gateway (OpenAPI docs at /docs).

    The config is validated and the port bound before the gateway says it
    serves; any problem is one line naming the key, exit status 2.

    Signals: SIGHUP reloads the config file (validated first; a bad one is
    refused with a log line and the running config kept; requests in flight
    finish on the old resources). SIGTERM drains: no new connections, in-flight
    requests get [gateway] shutdown_timeout seconds, then exit 0.

    Slow clients are cut off by [gateway] header_timeout, body_timeout and
    keep_alive_timeout (docs/configuration.md).
    """
    from iogate.gateway.server import BindError, bind

    path = _config_path(config)
    settings = _load(config)
    try:
        settings = _with_bind(settings, host, port)
    except ConfigError as exc:
        raise fail("config error", str(exc)) from None
    gateway = settings.gateway
    try:
        sock = bind(gateway.host, gateway.port)
    except BindError as exc:
        raise fail("cannot serve", exc.strerror or str(exc)) from None
    if gateway.port == 0:  # the port the system chose, for the line below and the workers
        gateway = gateway.model_copy(update={"port": sock.getsockname()[1]})
        settings = settings.model_copy(update={"gateway": gateway})

    resources = [f"{name} ({db.type})" for name, db in settings.databases.items()]
    resources += [f"{name} (api)" for name in settings.apis]
    shown_host = f"[{gateway.host}]" if ":" in gateway.host else gateway.host
    err.print(
        escape(
            f"iogate serving http://{shown_host}:{gateway.port} (docs at /docs) "
            f"with {', '.join(resources) or 'no resources'}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    from iogate.gateway.logging import configure_logging, secrets_of

    configure_logging(level=log_level, secrets=secrets_of(settings), background=True)
    from iogate.gateway.shared_state import memory_cache_warning, rate_limit_warning

    for warning in (
        memory_cache_warning(settings, workers=workers),
        rate_limit_warning(settings, workers=workers),
    ):
        if warning is not None:  # once, here, rather than once per worker
            import logging

            logging.getLogger("iogate.gateway").warning(warning)
    if workers > 1:
        _serve_workers(path, settings, workers, log_level, sock)
        return
    _serve_one(path, settings, (host, port), log_level, sock)


def _serve_one(
    path: Path | None,
    settings: Settings,
    overrides: tuple[str | None, int | None],
    log_level: str,
    sock: socket.socket,
) -> None:
    """One process; SIGHUP swaps the config in place (iogate.gateway.reload)."""
    import logging
    import signal

    from iogate.gateway.app import create_app, load_checked
    from iogate.gateway.reload import ReloadableApp
    from iogate.gateway.server import apply_timeouts, build_config, run

    bound = settings.gateway

    def load() -> Settings:
        fresh = _with_bind(load_checked(path), *overrides)
        if (fresh.gateway.host, fresh.gateway.port) != (bound.host, bound.port):
            logging.getLogger("iogate.gateway.reload").warning(
                "gateway.host/port: the gateway keeps listening on %s:%s until restarted",
                bound.host,
                bound.port,
            )
            update = {"host": bound.host, "port": bound.port}
            fresh = fresh.model_copy(update={"gateway": fresh.gateway.model_copy(update=update)})
        return fresh

    served = ReloadableApp(
        settings,
        build=create_app,
        load=load,
        source=str(path) if path else "the embedded default config",
        on_reload=lambda fresh: apply_timeouts(server_config, fresh.gateway),
    )
    server_config = build_config(served, settings.gateway, log_level=log_level)
    signal.signal(signal.SIGHUP, served.note_early_hup)  # until the loop handles it
    run(server_config, sockets=[sock])


def _serve_workers(
    path: Path | None, settings: Settings, workers: int, log_level: str, sock: socket.socket
) -> None:
    """Several uvicorn workers sharing one Prometheus multiprocess directory.

    SIGHUP: the parent validates the config and keeps the text it validated
    in a private snapshot, then uvicorn's supervisor starts a new worker per
    old one (each reads the snapshot) and stops the old one once the new one
    answers; SIGTERM drains each worker. A worker restarted after a crash
    reads the snapshot too, never a file caught half-edited or invalid.
    """
    import tempfile

    from iogate.gateway.app import load_checked
    from iogate.gateway.server import build_config, run
    from iogate.gateway.settings import read_config_text

    metrics_dir = tempfile.mkdtemp(prefix="iogate-metrics-")
    private_dir = tempfile.mkdtemp(prefix="iogate-config-")  # mode 0700: holds secrets
    snapshot = Path(private_dir) / "iogate.toml"
    # Read by the workers (and by prometheus-client at import) before they start.
    os.environ["IOGATE_CONFIG"] = str(path.resolve()) if path else ""
    os.environ["IOGATE_CONFIG_SNAPSHOT"] = str(snapshot)
    # --host/--port given on the command line: the workers' Host allow-list
    # default depends on the bind address, so they must see the same one.
    os.environ["IOGATE_SERVE_HOST"] = settings.gateway.host
    os.environ["IOGATE_SERVE_PORT"] = str(settings.gateway.port)
    os.environ["IOGATE_SERVE_LOG_LEVEL"] = log_level
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    bound = settings.gateway

    def check_reload() -> None:
        """Validate the config file; keep its text for the workers if it is good."""
        text = read_config_text(path)
        fresh = load_checked(path, text=text)
        if not bound.is_loopback() and not fresh.gateway.api_keys:
            raise ConfigError(
                f"gateway.api_keys: the gateway listens on {bound.host}, a non-loopback "
                "host, so the config needs keys ([[gateway.api_keys]])"
            )
        _write_private(snapshot, text)

    try:
        check_reload()  # the workers' first snapshot
        server_config = build_config(
            "iogate.gateway.app:app_from_environment",
            settings.gateway,
            log_level=log_level,
            workers=workers,
            factory=True,
        )
        run(server_config, sockets=[sock], check_reload=check_reload)
    finally:
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(private_dir, ignore_errors=True)


def _write_private(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` at once (readers see old or new), mode 0600."""
    partial = target.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(partial, target)


@app.command()
def check(
    config: ConfigOption = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds allowed to open and to ping each resource.", min=0.1)
    ] = 3.0,
) -> None:
    """Validate the config and ping every resource.

    Exit 0 when every resource answers, 1 when one does not, 2 (one line
    naming the key) when the config itself is invalid.
    """
    from iogate.check import run_check

    raise typer.Exit(run_check(_config_path(config), timeout=timeout, errors=err))


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
    job: Annotated[
        bool,
        typer.Option(
            "--job",
            help="Submit it as a durable job ([jobs] store and broker) and follow it; "
            "run again after Ctrl+C to pick the display up.",
        ),
    ] = False,
) -> None:
    """Run a batch file with a progress bar and a summary table.

    Exit 0 when every operation succeeded, 1 when some failed (the --output
    file holds every Result either way), 2 when the config or the file is
    unusable. With --job the batch becomes a durable job (docs/jobs.md):
    FILE.iogate-job holds its id until it ends, so an interrupted run
    follows the same job when started again instead of submitting it twice.
    """
    from iogate.run_command import run_batch_file, run_job_file

    settings = _load(config)
    if job:
        raise typer.Exit(run_job_file(file, settings, output))
    raise typer.Exit(run_batch_file(file, settings, output))


@app.command()
def worker(
    config: ConfigOption = None,
    chunks: Annotated[
        int | None,
        typer.Option(help="Chunks run at once (overrides [jobs] worker_chunks).", min=1, max=64),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run chunks of durable jobs from [jobs] broker until SIGTERM or Ctrl+C.

    Start any number, on any machine, with the same config as the gateways
    ([jobs] store on PostgreSQL when they are on several machines). A chunk
    in flight when the worker stops is handed to another worker, which runs
    only the operations without a stored result. Exit 0 after a signal, 2
    for a config error, 3 when the store or the broker cannot be reached.
    """
    import asyncio

    settings = _load(config)
    if not settings.jobs.broker:
        raise fail(
            "config error",
            "jobs.broker: iogate worker takes chunks from a broker (nats://... or amqp://...); "
            "with none, `iogate serve` runs jobs itself",
        )
    from iogate.gateway.logging import configure_logging, secrets_of
    from iogate.worker_command import run_worker

    configure_logging(level=log_level, secrets=secrets_of(settings))
    raise typer.Exit(asyncio.run(run_worker(settings, chunks=chunks)))


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
