"""Seed 002's LinkedIn-posts service, rebuilt on iogate's public API.

Dedicated database functions (``LinkedInPostsDatabase``), dedicated API
clients on three named ``AsyncAPIManager``s (``LinkedInAPI``,
``AIAnalysisAPI``, ``NotificationAPI``), and ``BatchOperations`` tying them
together with per-post isolation. ``open_service`` wires them on one
orchestrator; ``python -m examples.linkedin_posts`` runs a short demo against
PostgreSQL and an in-process fake of the three upstreams. See README.md.
"""

from .batch import BatchOperations, PostOutcome
from .clients import API_SETTINGS, AIAnalysisAPI, LinkedInAPI, NotificationAPI
from .database import UPDATABLE_COLUMNS, BatchCreateError, LinkedInPostsDatabase
from .fake_upstream import FakeUpstream
from .service import LinkedInPostsService, open_service

__all__ = [
    "API_SETTINGS",
    "UPDATABLE_COLUMNS",
    "AIAnalysisAPI",
    "BatchCreateError",
    "BatchOperations",
    "FakeUpstream",
    "LinkedInAPI",
    "LinkedInPostsDatabase",
    "LinkedInPostsService",
    "NotificationAPI",
    "PostOutcome",
    "open_service",
]
