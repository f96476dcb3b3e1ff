"""What route modules need from the running app, as FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request

from iogate.core.deadline import Deadline
from iogate.gateway.settings import Settings
from iogate.orchestrator import AsyncOperationOrchestrator

__all__ = ["orchestrator_of", "request_deadline", "settings_of"]


def orchestrator_of(request: Request) -> AsyncOperationOrchestrator:
    orchestrator: AsyncOperationOrchestrator = request.app.state.orchestrator
    return orchestrator


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def request_deadline(request: Request) -> Deadline:
    """One deadline per request (``[gateway] request_timeout``)."""
    deadline: Deadline | None = getattr(request.state, "deadline", None)
    if deadline is None:
        deadline = Deadline(settings_of(request).gateway.request_timeout)
        request.state.deadline = deadline
    return deadline
