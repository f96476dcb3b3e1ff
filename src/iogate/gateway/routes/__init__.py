"""Route modules; ``create_app`` includes every router listed here.

Each module exports ``router`` (a FastAPI ``APIRouter``) and reaches the
running app only through ``iogate.gateway.deps``.
"""

from fastapi import APIRouter

from iogate.gateway.routes import api, batch, dashboard, database, jobs, observability

ROUTERS: list[APIRouter] = [
    database.router,
    api.router,
    dashboard.router,
    batch.router,
    jobs.router,
    observability.router,
]

__all__ = ["ROUTERS"]
