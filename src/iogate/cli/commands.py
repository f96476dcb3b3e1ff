"""``iogate check``, ``iogate run``, ``iogate worker`` and ``iogate version``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import iogate.cli.serve  # noqa: F401  (registered first: listed first in --help)
from iogate.cli.common import ConfigOption, app, config_path, err, fail, load

__all__ = ["check", "run", "version", "worker"]


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
    from iogate.cli.check import run_check

    raise typer.Exit(run_check(config_path(config), timeout=timeout, errors=err))


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
    from iogate.cli.run import run_batch_file, run_job_file

    settings = load(config)
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

    settings = load(config)
    if not settings.jobs.broker:
        raise fail(
            "config error",
            "jobs.broker: iogate worker takes chunks from a broker (nats://... or amqp://...); "
            "with none, `iogate serve` runs jobs itself",
        )
    from iogate.cli.worker import run_worker
    from iogate.gateway.logging import configure_logging, secrets_of

    configure_logging(level=log_level, secrets=secrets_of(settings))
    raise typer.Exit(asyncio.run(run_worker(settings, chunks=chunks)))


@app.command()
def version() -> None:
    """Print the iogate version."""
    from iogate import __version__

    typer.echo(__version__)
