"""``iogate serve``: one process, or ``--workers N`` under a supervisor.

``serve`` reloads the config on SIGHUP and drains on SIGTERM
(docs/configuration.md, "Reload and shutdown").
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from iogate.cli.common import ConfigOption, app, config_path, err, fail, load, with_bind
from iogate.core.errors import ConfigError
from iogate.gateway.settings import Settings

__all__ = ["serve"]


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

    path = config_path(config)
    settings = load(config)
    try:
        settings = with_bind(settings, host, port)
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
        fresh = with_bind(load_checked(path), *overrides)
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
